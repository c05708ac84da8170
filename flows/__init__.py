"""Prefect flows, the build engine and the `rapport` CLI."""

import os

# Polars' allocator (jemalloc) hands freed pages back to the OS within 200 ms instead of
# holding them: the 1M-message rebuild peaks ~0.15 GiB lower (3.05 -> 2.88 GiB). It only
# takes effect if set before Polars loads, so it lives here; set the variable to override.
os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0"
)
