"""Prefect flows: wiring only; every step is a `pipeline` function."""
