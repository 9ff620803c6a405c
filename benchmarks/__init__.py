"""The project's measurement scripts in topic folders (training, accuracy, deploy, distributed, data), each
run from the repository root as `python -m benchmarks.<topic>.<name>`; what they share is `benchmarks.common`,
and `python -m benchmarks.report` renders the tables of their committed results into the docs."""
