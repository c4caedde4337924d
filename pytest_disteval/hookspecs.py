"""Hooks of pytest-disteval's own, for plugins (registered in plugin.py's ``pytest_addhooks``).

The core items (``items/``) call these hooks and know nothing of who implements
them; the regression feature (``regression/plugin.py``) is one implementation, a
third-party plugin or a ``conftest.py`` may be another. The dependency runs one
way: ``regression/`` imports ``items/``, never the reverse
(``grep -rn "import.*regression" pytest_disteval/items`` finds nothing;
tests/integration/test_hooks.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_disteval.items.nodes import DistevalItem, TaskNode
    from pytest_disteval.jobs.outcome import JobOutcome
    from pytest_disteval.suite.model import TaskEntry


@pytest.hookspec()
def pytest_disteval_task_items(collector: TaskNode,
                               entry: TaskEntry) -> list[pytest.Item] | None:
    """Extra items of one task entry, collected after its threshold and budget items.

    Return a list of items made with ``SomeItem.from_parent(collector, name=...)``
    (their node ids read ``suite.yaml::model::entry::name``), or None for none.
    Every implementation's list is collected, in pluggy's call order.
    """


@pytest.hookspec()
def pytest_disteval_job_outcome(item: DistevalItem, outcome: JobOutcome) -> None:
    """An item has its job's outcome: run in this session, or read from the result store.

    Called by every item of the job as it runs (any item may be the first), with
    the same outcome object until the job runs again for entries added later; an
    implementation that keeps something per job or entry keeps it once.
    """
