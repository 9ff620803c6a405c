"""Benchmarks of data (see benchmarks/README.md)."""
