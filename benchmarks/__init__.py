"""Benchmarks for the billing service; run them as `python -m benchmarks.<name>` from the repo root."""
