"""Benchmarks of distributed (see benchmarks/README.md)."""
