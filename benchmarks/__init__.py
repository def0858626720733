"""Benchmarks: `python -m benchmarks.NAME [--json]`; the last stdout line is one JSON object."""
