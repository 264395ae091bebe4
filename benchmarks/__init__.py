"""Benchmarks for the billing service; run each as `python -m benchmarks.<name>` from the root."""
