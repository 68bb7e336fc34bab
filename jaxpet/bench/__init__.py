"""Benchmarks: `python -m jaxpet.bench train|decode|encode|generate|ensemble|peak`."""
