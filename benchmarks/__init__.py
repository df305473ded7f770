"""Micro- and model-level benchmarks (CPU/XLA). Run as `python -m benchmarks.<name>`."""
