"""The regression feature's plugin: items against a baseline, and saving one.

Registered by plugin.py when ``--disteval-baseline`` or ``--disteval-save-baseline``
is given. It reaches the core items only through the package's own hooks
(hookspecs.py): ``pytest_disteval_task_items`` adds the regression items of a task
entry, ``pytest_disteval_job_outcome`` records what a job gave for the baseline
being saved.

Under xdist every worker records what its items saw and hands it to the
controller through ``workeroutput``; only the controller writes the file, once,
atomically, so concurrent workers never race on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.items.nodes import DistevalItem, TaskNode
from pytest_disteval.jobs.outcome import JobOutcome
from pytest_disteval.regression.baseline import (
    entry_id,
    load_baseline,
    record_entry,
    write_baseline,
)
from pytest_disteval.regression.items import regression_items
from pytest_disteval.settings import Settings
from pytest_disteval.suite.model import TaskEntry

WORKER_KEY = "disteval_baseline"  # the records' key in xdist's workeroutput


class BaselinePlugin:
    """Holds the baseline compared with and the records of the one being saved."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.baseline = load_baseline(settings.baseline) if settings.baseline else None
        self.records: dict[str, dict[str, Any]] = {}
        self.written: Path | None = None

    def pytest_disteval_task_items(self, collector: TaskNode,
                                   entry: TaskEntry) -> list[pytest.Item]:
        if self.baseline is None:
            return []  # only saving one: nothing to compare with
        return list(regression_items(collector, entry, self.baseline))

    def pytest_disteval_job_outcome(self, item: DistevalItem, outcome: JobOutcome) -> None:
        """Keep every entry of an item's job once (any item of the job may be first)."""
        if self.settings.save_baseline is None:
            return
        for name, stored in outcome.entries.items():
            key = entry_id(str(item.job.suite.path), item.job.name, name)
            if key not in self.records:
                self.records[key] = record_entry(item, name, stored)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        # the controller: a finished xdist worker's records (workers never write the file)
        records = getattr(node, "workeroutput", {}).get(WORKER_KEY) or {}
        for key, record in records.items():
            self.records.setdefault(key, record)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.settings.save_baseline is None:
            return
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[WORKER_KEY] = self.records
            return
        if self.config.option.collectonly or self.settings.plan_only or not self.records:
            return  # nothing ran: an existing baseline is worth more than an empty one
        write_baseline(self.settings.save_baseline, self.records)
        self.written = self.settings.save_baseline

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.settings.save_baseline is not None and self.written is None:
            terminalreporter.write_line(f"disteval: no task entry was evaluated; baseline "
                                        f"{self.settings.save_baseline} not written")
        if self.written is not None:
            with_samples = sum(1 for r in self.records.values() if r.get("samples"))
            terminalreporter.write_line(
                f"disteval: baseline of {len(self.records)} task entries "
                f"({with_samples} with per-document results) written to {self.written}")
