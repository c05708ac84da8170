"""Benchmarks for DESIGN §8: `python -m benchmarks.run` (or `make bench`)."""
