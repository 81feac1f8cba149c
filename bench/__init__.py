"""Benchmarks for nicreconciled against the embedded IMDS simulator (run: python -m bench)."""
