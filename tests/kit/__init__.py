"""Servers and helpers that only tests and benchmarks use (never shipped in the product)."""
