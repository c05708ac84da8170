"""Prefect flows, the build engine and the `rapport` CLI."""

import os

# Polars' allocator (jemalloc) keeps freed pages for 3 s before handing them back to the
# OS. A rebuild frees and allocates gigabytes within seconds; faulting pages back in cost
# ~0.7-1 s of a 1M-message rebuild with 200 ms (7.1-8.6 s -> 6.3-6.7 s), for a peak ~0.5
# GiB higher (2.09 -> 2.56-2.60 GiB; 5 s: 2.7-2.8 GiB, never: 3.08). Polars' own default
# is 500 ms. It only takes effect if set before Polars loads, so it lives here; set the
# variable to override.
os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:3000,muzzy_decay_ms:0"
)
