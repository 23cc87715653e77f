"""The harness version, written into every record (bench.store.provenance)."""

__version__ = "0.1.0"
