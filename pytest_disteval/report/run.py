"""The run report: one dict describing the whole session, the source of every report.

The JSON report is this dict as it is; the markdown, the HTML and the terminal's
job table are rendered from it, so they never disagree. Items come from test
reports' ``user_properties`` (xdist sends those to the controller) and jobs from
the results files the items point at, so the report is the same with ``-n``.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval import __version__
from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.store.export import plain
from pytest_disteval.store.results import read_json_object

SCHEMA_VERSION = 1

_EXIT_NAMES = {0: "ok", 1: "tests_failed", 2: "interrupted", 3: "internal_error",
               4: "usage_error", 5: "no_tests_collected"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecorder:
    """Collects items as their reports arrive; ``build`` makes the run report."""

    args: list[str]
    rootdir: str
    started_at: str = field(default_factory=_now)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "kind" not in props:
            return  # not an item of a suite
        # the call phase, or a setup that never reached it (a skip, an error)
        if not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        self.items.append({
            "nodeid": report.nodeid,
            "kind": props["kind"],
            "outcome": report.outcome,
            "verdict": props.get("verdict"),
            "model": props.get("model"),
            "job": report.nodeid.split("::", 1)[0] + "::" + str(props.get("model", "")),
            "duration_s": round(report.duration, 3),
            "properties": plain(props),
            "failure": (report.longreprtext or None) if report.failed else None,
            "skip_reason": _skip_reason(report),
        })

    def build(self, exit_status: int, machine_gpus: list[dict[str, Any]] | None,
              gpu_source: str | None, store_dir: Path | None = None) -> dict[str, Any]:
        counts = {o: sum(1 for i in self.items if i["outcome"] == o)
                  for o in ("passed", "failed", "skipped")}
        # failing items first: that is what a reader looks for
        items = sorted(self.items, key=lambda i: i["outcome"] != "failed")
        return {
            "schema_version": SCHEMA_VERSION,
            "generator": {"name": "pytest-disteval", "version": __version__,
                          "lm_eval_version": package_version("lm_eval"),
                          "pytest_version": pytest.__version__,
                          "python_version": platform.python_version()},
            "started_at": self.started_at,
            "finished_at": _now(),
            "args": list(self.args),
            "rootdir": self.rootdir,
            "exit_status": int(exit_status),
            "exit_status_name": _EXIT_NAMES.get(int(exit_status), "unknown"),
            "summary": {"items": len(self.items), **counts,
                        "verdict": "fail" if counts["failed"] or int(exit_status) not in (0, 5)
                        else "pass"},
            "machine": {"host": socket.gethostname(), "platform": platform.platform(),
                        "python": sys.executable, "cpu_count": os.cpu_count(),
                        "gpu_inventory": gpu_source, "gpus": machine_gpus or []},
            "jobs": self._jobs(store_dir),
            "items": items,
        }

    def _jobs(self, store_dir: Path | None) -> list[dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = {}
        for item in self.items:
            props = item["properties"]
            job = jobs.setdefault(item["job"], {
                "id": item["job"], "suite": item["job"].split("::", 1)[0],
                "model": props.get("model"), "backend": props.get("backend"),
                "results_path": None, "samples_path": None, "job": None, "results": None,
                "items": {"passed": 0, "failed": 0, "skipped": 0}})
            job["items"][item["outcome"]] = job["items"].get(item["outcome"], 0) + 1
            path = props.get("results")
            if path and job["results_path"] is None:
                job["results_path"] = str(path)
                results = read_json_object(Path(str(path)))
                if results is not None:
                    job["results"] = results
                    disteval = results.get("config", {}).get("disteval", {}) or {}
                    job["job"] = disteval.get("job") or _stored_record(store_dir, results)
                    job["samples_path"] = disteval.get("samples")  # --disteval-samples
        return list(jobs.values())


def _stored_record(store_dir: Path | None, results: dict[str, Any]) -> dict[str, Any] | None:
    """The stored record of the run that computed cached results, for a results file
    without one: a -k run answered from the store selects fewer entries than that run
    had, and the store keeps the record under the whole set of entries."""
    from pytest_disteval.jobs import record as jobrecord

    model_key = (results.get("config", {}).get("disteval", {}) or {}).get("model_key")
    tasks = set(results.get("results") or {})
    if store_dir is None or not model_key or not tasks:
        return None
    metas = sorted((store_dir / "jobs").glob(f"{model_key}-*.json"),
                   key=lambda p: p.stat().st_mtime, reverse=True)  # the latest run first
    for path in metas:
        meta = read_json_object(path)
        record = jobrecord.recorded(meta) if meta is not None else None
        if record is not None and tasks <= set(record.get("tasks") or {}):
            return record
    return None


def _skip_reason(report: pytest.TestReport) -> str | None:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return None


def inventory_gpus(scheduler: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The GPUs the session saw (none on CPU); never raises: a report must still be written."""
    try:
        inventory = scheduler.inventory()
    except Exception:  # noqa: BLE001 - no NVML, a bad fake spec: the report says none
        return [], None
    if inventory is None:
        return [], None
    return ([{"index": g.index, "uuid": g.uuid, "name": g.name,
              "memory_total_bytes": g.total_memory} for g in inventory.gpus()],
            inventory.source)
