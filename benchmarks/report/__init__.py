"""`python -m benchmarks.report`: the tables of measured numbers in the docs, rendered from the committed
results JSON between `<!-- report:NAME -->` and `<!-- /report:NAME -->` markers, so that no table can
drift from the file it names (issue 31). `--check` (in CI) fails on a block that differs from its source.

Rendering imports neither torch nor the benchmarks: it reads JSON and writes markdown."""
