"""Regression against a saved baseline: the baseline file, statistical tests, regression items."""
