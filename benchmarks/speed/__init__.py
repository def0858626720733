"""speed benchmarks (see benchmarks/__init__.py for the rooms)."""
