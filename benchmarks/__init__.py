"""Benchmarks for DESIGN §8: `python -m benchmarks.run` (or `make bench`)."""

import flows  # noqa: F401  (the allocator settings the product runs with, before Polars loads)
