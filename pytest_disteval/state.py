"""Stash keys: the session's state lives in ``config.stash``, not in private attributes."""

from __future__ import annotations

import pytest

from .scheduler import JobScheduler
from .settings import Settings

SETTINGS = pytest.StashKey[Settings]()
SCHEDULER = pytest.StashKey[JobScheduler]()
