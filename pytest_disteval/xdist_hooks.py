"""Hooks for pytest-xdist, registered only when xdist is installed.

All items of one job must run on one xdist worker, or the job runs twice (or
waits on the other worker's lock). xdist's ``loadgroup`` relies on a node id
attribute pytest 9.2 no longer reads, so this plugin brings its own scheduler:
xdist's LoadScope, with a job (``suite.yaml::model``) as the scope of suite
items and every other test a scope of its own (as ``--dist load`` would do).
"""

from __future__ import annotations

from typing import Any

import pytest

SUITE_SUFFIXES = (".yaml", ".yml")


def job_scope(nodeid: str) -> str:
    """``suites/a.yaml::m::task::acc`` -> ``suites/a.yaml::m``; other ids are their own scope."""
    parts = nodeid.split("::")
    if parts[0].endswith(SUITE_SUFFIXES) and len(parts) >= 2:
        return "::".join(parts[:2])
    return nodeid


class XdistHooks:
    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") not in ("load", "loadgroup"):
            return None  # the user chose another mode: respect it
        from xdist.scheduler import LoadScopeScheduling

        class JobScheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return job_scope(nodeid)

        return JobScheduling(config, log)
