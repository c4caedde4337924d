"""Stash keys: the session's state lives in ``config.stash``, not in private attributes."""

from __future__ import annotations

import pytest

from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.settings import Settings

SETTINGS = pytest.StashKey[Settings]()
SCHEDULER = pytest.StashKey[JobScheduler]()
