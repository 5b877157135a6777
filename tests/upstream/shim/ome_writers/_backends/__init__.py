"""Upstream's `ome_writers._backends` package: only names its test modules import at module
level, so that their tests of the public API run (a test that uses an internal fails, and is
listed in expected_failures.txt)."""
