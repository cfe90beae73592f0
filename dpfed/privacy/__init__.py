"""Differential-privacy mechanisms and the accounting of what a run really did."""
