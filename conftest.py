"""Marks the repository root for pytest, which puts it on sys.path so tests import `benchmarks.<topic>.<name>`."""
