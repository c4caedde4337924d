"""pytest-disteval: LLM benchmark suites as pytest tests.

The public surface is small on purpose: the plugin itself is found through the
``pytest11`` entry point, and Python tests use the ``disteval`` fixture.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["DistevalImbalanceWarning", "__version__"]


def __getattr__(name: str) -> object:
    # lazily: the worker imports this package and needs none of pytest's machinery
    if name == "DistevalImbalanceWarning":
        from pytest_disteval.items.budgets import DistevalImbalanceWarning

        return DistevalImbalanceWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
