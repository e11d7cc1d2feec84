"""Test support: servers and helpers only the tests use (never shipped in the package)."""
