"""Benchmarks of training (see benchmarks/README.md)."""
