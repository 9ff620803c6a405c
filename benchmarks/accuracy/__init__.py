"""Benchmarks of accuracy (see benchmarks/README.md)."""
