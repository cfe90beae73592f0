"""Empirical privacy auditing and estimation from canary scores (numpy/scipy only)."""
