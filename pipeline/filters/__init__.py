"""Filters: one pure, vectorised function each (arrays in, scores or mask out)."""
