"""The ``dedup`` repository engine: content-defined chunks, deduplicated, compressed and encrypted in
packs, with keys that have roles. The format is described in docs/engines.md."""
