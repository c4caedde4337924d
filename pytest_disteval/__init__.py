"""pytest-disteval: LLM benchmark suites as pytest tests.

The public surface is small on purpose: the plugin itself is found through the
``pytest11`` entry point, and Python tests use the ``disteval`` fixture.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
