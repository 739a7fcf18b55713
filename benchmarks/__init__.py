"""Cross-framework benchmarks of layernorm (``python -m benchmarks``)."""
