"""Benchmarks of deploy (see benchmarks/README.md)."""
