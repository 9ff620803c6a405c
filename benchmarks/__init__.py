"""The project's measurement scripts, each run from the repository root as `python -m benchmarks.<name>`."""
