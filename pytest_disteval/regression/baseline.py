"""Baseline files: a run's scores saved (``--disteval-save-baseline``), read back to compare.

A baseline holds, per (suite, model, task entry), every metric lm-eval reported
(value, stderr, n, higher_is_better), the entry's per-document results where
lm-eval logged samples (samples.py's compact arrays, keyed by doc id and doc
hash), and the hardware and layout the job ran on, so a comparison across a
hardware or layout change can show both sides::

    {"disteval_baseline": 1, "created": "...", "versions": {...},
     "entries": {"suites/smoke.yaml::tiny-arith::arith_mc": {
         "suite": ..., "model": ..., "entry": ..., "task": ..., "model_key": ...,
         "hardware": "cpu", "layout": {"tp": 1, "pp": 1, "dp": 1}, "settings": {...},
         "metrics": {"acc,none": {"value": 1.0, "stderr": 0.0, "n": 200,
                                  "higher_is_better": true}},
         "samples": {"doc_id": [...], "doc_hash": [...], "metrics": {...}, ...} | null}}}

Under xdist every worker records what its items saw and hands it to the
controller through ``workeroutput``; only the controller writes the file, once,
atomically, so concurrent workers never race on it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_disteval import __version__
from pytest_disteval.gpu.inventory import NoGPUError
from pytest_disteval.items.thresholds import MissingMetric, Score, read_score
from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.settings import Settings
from pytest_disteval.store.results import write_json_atomic
from pytest_disteval.store.samples import read_samples

if TYPE_CHECKING:
    from pytest_disteval.items.nodes import DistevalItem
    from pytest_disteval.jobs.outcome import JobOutcome

BASELINE_FORMAT = 1
WORKER_KEY = "disteval_baseline"  # the records' key in xdist's workeroutput


def entry_id(suite: str, model: str, entry: str) -> str:
    """``suites/smoke.yaml::tiny-arith::arith_mc``: a baseline entry's key, the node id's start."""
    return f"{suite}::{model}::{entry}"


class Baseline:
    """A loaded, validated baseline file."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.created = str(data.get("created", "?"))
        self.versions = dict(data.get("versions") or {})
        self.entries: dict[str, dict[str, Any]] = data["entries"]

    def entry(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    @staticmethod
    def score(entry: dict[str, Any], metric: str) -> Score | None:
        record = (entry.get("metrics") or {}).get(metric)
        if record is None:
            return None
        return Score(str(entry.get("task", "")), metric, float(record["value"]),
                     record.get("stderr"), record.get("n"), record.get("higher_is_better"))


def load_baseline(path: Path) -> Baseline:
    """Read and check a baseline file; a UsageError says which file and what is wrong."""
    def bad(what: str) -> pytest.UsageError:
        return pytest.UsageError(f"--disteval-baseline: {path}: {what}; write one with "
                                 "--disteval-save-baseline PATH")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as exc:
        raise bad(f"cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "disteval_baseline" not in data:
        raise bad("not a pytest-disteval baseline (no 'disteval_baseline' format key)")
    if data["disteval_baseline"] != BASELINE_FORMAT:
        raise bad(f"baseline format {data['disteval_baseline']!r} is not supported "
                  f"(this version reads format {BASELINE_FORMAT})")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise bad("'entries' is missing or not a mapping")
    for key, entry in entries.items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(metrics, dict) or not all(
                isinstance(m, dict) and isinstance(m.get("value"), int | float)
                for m in metrics.values()):
            raise bad(f"entry {key!r} has no valid 'metrics' (each with a numeric 'value')")
    return Baseline(path, data)


# ------------------------------------------------------------------ recording a run


def hardware_of(item: DistevalItem) -> tuple[str, dict[str, int]]:
    """Where the item's job runs in this session, in words, and its layout."""
    scheduler = item.scheduler
    try:
        plan = scheduler.plan(item.job)
        source = scheduler.inventory_source()
    except (LayoutError, NoGPUError, ValueError):
        return "unknown", {}  # a job that cannot be planned has no entries to record anyway
    layout = {"tp": plan.layout.tp, "pp": plan.layout.pp, "dp": plan.layout.dp}
    gpus = {g.uuid: g.name for group in plan.groups for g in group}
    if not gpus:
        return "cpu", layout
    names = sorted(set(gpus.values()))
    text = f"{len(gpus)}x {', '.join(names)}"
    return (text + " (fake inventory: ran on the CPU)" if source == "fake" else text), layout


def metrics_of(lm_eval: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """Every metric lm-eval reported for ``task``: value, stderr (None for N/A), n, direction."""
    table = (lm_eval.get("results") or {}).get(task) or {}
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(table):
        if "," not in key or "_stderr," in key:
            continue
        try:
            score = read_score(lm_eval, task, key)
        except MissingMetric:
            continue  # not a number: nothing to compare
        if math.isnan(score.value):
            continue
        out[key] = {"value": score.value, "stderr": score.stderr, "n": score.n,
                    "higher_is_better": score.higher_is_better}
    return out


def record_entry(item: DistevalItem, name: str, stored: dict[str, Any]) -> dict[str, Any]:
    entry = next(e for e in item.job.entries if e.name == name)
    hardware, layout = hardware_of(item)
    path = item.scheduler.store.path(stored["model_key"], stored["entry_key"])
    samples = (read_samples(path, stored["entry_key"]) or {}).get(entry.task)
    return {
        "suite": str(item.job.suite.path), "model": item.job.name, "entry": name,
        "task": entry.task, "backend": item.job.model.backend,
        "model_key": stored["model_key"], "entry_key": stored["entry_key"],
        "settings": stored.get("settings"), "computed_at": stored.get("computed_at"),
        "hardware": hardware, "layout": layout,
        "metrics": metrics_of(stored["lm_eval"], entry.task),
        "samples": samples,
    }


class BaselinePlugin:
    """Holds the baseline compared with and the records of the one being saved."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.baseline = load_baseline(settings.baseline) if settings.baseline else None
        self.records: dict[str, dict[str, Any]] = {}
        self.written: Path | None = None

    def record(self, item: DistevalItem, outcome: JobOutcome) -> None:
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
        write_json_atomic(self.settings.save_baseline, {
            "disteval_baseline": BASELINE_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"pytest_disteval": __version__, "lm_eval": package_version("lm_eval")},
            "entries": dict(sorted(self.records.items())),
        }, indent=None)
        self.settings.save_baseline.chmod(0o644)  # a file to share and commit, not a secret
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
