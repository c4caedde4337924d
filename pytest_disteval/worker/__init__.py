"""The worker: a child process that owns the model and calls lm-eval's Python API.

``python -m pytest_disteval.worker SPEC.json`` (``__main__``) runs ``main.main``.
This file stays empty: the pytest process imports the package's leaf modules
(never lm-eval or torch) without loading the worker itself.
"""
