"""Fixtures for users' own tests: ``disteval`` (evaluate from Python) and ``gpu_group``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_disteval.gpu.inventory import GPU, make_groups
from pytest_disteval.gpu.lease import Lease
from pytest_disteval.items.thresholds import Score, read_score
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.outcome import JobOutcome
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.planner import granted_gpus
from pytest_disteval.state import SCHEDULER
from pytest_disteval.suite import overrides
from pytest_disteval.suite.parse import parse_suite


class EvaluationFailed(AssertionError):
    pass


@dataclass
class Evaluation:
    """Results of one ``disteval.evaluate`` call."""

    outcome: JobOutcome

    @property
    def results(self) -> dict[str, Any]:
        """lm-eval's results dict, merged over the tasks evaluated."""
        import json

        assert self.outcome.results_path is not None
        return json.loads(self.outcome.results_path.read_text())  # type: ignore[no-any-return]

    def score(self, task: str, metric: str) -> Score:
        """``metric`` as written in suites: ``acc`` or ``exact_match,strict-match``."""
        key = metric if "," in metric else f"{metric},none"
        for name, stored in self.outcome.entries.items():
            if name == task or stored["task"] == task:
                return read_score(stored["lm_eval"], stored["task"], key)
        raise KeyError(f"task {task!r} was not evaluated; evaluated: "
                       f"{', '.join(self.outcome.entries)}")


class Disteval:
    """Evaluate a model from Python; a failed evaluation raises EvaluationFailed."""

    def __init__(self, scheduler: JobScheduler, base: Path, root: Path) -> None:
        self._scheduler = scheduler
        self._base = base
        self._root = root

    def evaluate(self, *, model: dict[str, Any], tasks: Sequence[str | dict[str, Any]],
                 include: Sequence[str | Path] = (), workdir: str | Path | None = None,
                 **defaults: Any) -> Evaluation:
        """``model`` and ``tasks`` take the keys a suite takes; paths are relative to the
        test file. ``defaults`` are task defaults: num_fewshot, limit, fewshot_seed."""
        suite: dict[str, Any] = {
            "disteval": 1,
            "include": [str(p) for p in include],
            "models": [dict(model)],
            "tasks": [t if isinstance(t, dict) else {"task": t} for t in tasks],
        }
        if workdir is not None:
            suite["workdir"] = str(workdir)
        if defaults:
            suite["defaults"] = defaults
        text = yaml.safe_dump(suite, sort_keys=False)
        # one pseudo suite per configuration: equal calls share a job, others never do
        tag = hashlib.sha256(text.encode()).hexdigest()[:12]
        suite["name"] = f"python-api-{tag}"
        text = yaml.safe_dump(suite, sort_keys=False)
        parsed = parse_suite(text, self._base / f"disteval-evaluate-{tag}.yaml", self._root,
                             require_thresholds=False)
        overrides.apply(parsed, self._scheduler.settings.overrides)  # as suites get them
        spec = parsed.models[0]
        job = self._scheduler.job_for(EvalJob(spec, parsed), spec.tasks)
        outcome = self._scheduler.outcome(job)
        if outcome.skip_reason and not outcome.entries:
            pytest.skip(outcome.skip_reason)
        if outcome.failure is not None and len(outcome.entries) < len(spec.tasks):
            raise EvaluationFailed(outcome.failure.render())
        return Evaluation(outcome)


@dataclass
class GpuGroup:
    """A leased group of GPUs for a user's own test; released when the test ends."""

    lease: Lease

    @property
    def gpus(self) -> list[GPU]:
        return list(self.lease.gpus)

    @property
    def indices(self) -> list[int]:
        return [g.index for g in self.lease.gpus]

    @property
    def cuda_visible_devices(self) -> str:
        return self.lease.cuda_visible_devices

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses: ``base`` (default os.environ) + the group."""
        return self.lease.env(base)


@pytest.fixture
def gpu_group(request: pytest.FixtureRequest) -> Iterator[GpuGroup]:
    """A group of GPUs leased across processes (xdist workers, other sessions).

    Size: ``@pytest.mark.gpu_group(size=2)``, or indirect parametrization
    (``@pytest.mark.parametrize("gpu_group", [2], indirect=True)``); default 1.
    Skips where no GPU is granted.
    """
    marker = request.node.get_closest_marker("gpu_group")
    size = getattr(request, "param", None) or (
        (marker.kwargs.get("size") or (marker.args[0] if marker.args else 1)) if marker else 1)
    scheduler: JobScheduler = request.config.stash[SCHEDULER]
    inv = scheduler.inventory()
    gpus, source = granted_gpus(inv, scheduler.settings.gpu)
    if not gpus:
        pytest.skip(f"gpu_group needs {size} GPU(s); {source}")
    try:
        groups = make_groups(gpus, int(size), None, inv)
    except ValueError as exc:
        pytest.skip(f"gpu_group: {exc}")
    lease = scheduler.leases.acquire_any(groups, timeout=scheduler.settings.timeout,
                                         owner=f"pytest gpu_group {request.node.nodeid}")
    try:
        yield GpuGroup(lease)
    finally:
        lease.release()


@pytest.fixture
def disteval(request: pytest.FixtureRequest) -> Disteval:
    """Run lm-eval evaluations from a test; shares jobs and the result store with suites."""
    return Disteval(request.config.stash[SCHEDULER], Path(request.path).parent,
                    request.config.rootpath)
