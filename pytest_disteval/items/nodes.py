"""Collection nodes: suite file -> model -> task -> threshold items; budgets per model.

Node ids read ``suites/smoke.yaml::tiny-arith::arith_mc::acc``,
``suites/smoke.yaml::tiny-arith::wall_time`` (a job's budget) and
``suites/smoke.yaml::tiny-arith::arith_mc::task_time`` (a task entry's budget).
Every item carries the marker ``disteval(suite=, model=, backend=, task=, metric=,
kind=)`` so ``-m`` can select on any of them, and the names are ``-k`` keywords.
Plugins add items to a task node through ``pytest_disteval_task_items`` (hookspecs.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_disteval.items import budgets
from pytest_disteval.items.thresholds import MissingMetric, Verdict, check_threshold, read_score
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.outcome import JobOutcome
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.state import SCHEDULER, SETTINGS
from pytest_disteval.suite import overrides
from pytest_disteval.suite.model import (
    Budget,
    Loc,
    ModelSpec,
    Suite,
    SuiteError,
    TaskEntry,
    Threshold,
)
from pytest_disteval.suite.parse import load_suite


class DistevalFailure(Exception):
    """A domain failure: rendered as plain lines, never as a traceback."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class SuiteFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        suite = load_suite(self.path, self.config.rootpath)
        # --disteval-limit / -dtype / -batch-size / -model-args, before jobs see the models
        overrides.apply(suite, self.config.stash[SETTINGS].overrides)
        self._check_marks(suite)
        for model in suite.models:
            yield ModelNode.from_parent(self, name=model.name, suite=suite, model=model)

    def _check_marks(self, suite: Suite) -> None:
        # an unregistered mark would warn (or, with --strict-markers, stop the whole
        # session) from inside collection; as a suite error only this suite is lost
        registered = {line.split(":")[0].split("(")[0].strip()
                      for line in self.config.getini("markers")}
        problems = []
        places = [(1, "marks", suite.marks)]
        for model in suite.models:
            places.append((model.loc.line, f"{model.name}.marks", model.marks))
            places.extend((e.loc.line, f"{model.name}.{e.name}.marks", e.marks)
                          for e in model.tasks)
        for line, key, marks in places:
            for mark in marks:
                if mark not in registered:
                    problems.append((line, key, f"marker {mark!r} is not registered; add it to "
                                     "the 'markers' ini option or remove it"))
        if problems:
            raise SuiteError(suite.path, sorted(set(problems)))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, SuiteError):
            return f"invalid suite:\n{excinfo.value}"
        return super().repr_failure(excinfo)


class ModelNode(pytest.Collector):
    def __init__(self, *, suite: Suite, model: ModelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.model = model
        self.job = EvalJob(model, suite)

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        for entry in self.model.tasks:
            yield TaskNode.from_parent(self, name=entry.name, entry=entry)
        for budget in self.model.budgets:
            if not budgets.KINDS[budget.kind].per_task:
                yield BudgetItem.from_parent(self, name=budget.kind, budget=budget)


class TaskNode(pytest.Collector):
    def __init__(self, *, entry: TaskEntry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entry = entry

    def collect(self) -> Iterator[pytest.Item]:
        for threshold in self.entry.thresholds:
            yield ThresholdItem.from_parent(self, name=threshold.written, threshold=threshold)
        model = self.getparent(ModelNode)
        assert model is not None
        # the entry's own task_time replaces the model's, which applies to every entry
        own = {b.kind: b for b in self.entry.budgets}
        for kind in budgets.TASK_KINDS:
            budget = own.get(kind) or next((b for b in model.model.budgets if b.kind == kind),
                                           None)
            if budget is not None:
                yield BudgetItem.from_parent(self, name=kind, budget=budget)
        # plugins' items (regression items among them): hookspecs.py
        for items in self.ihook.pytest_disteval_task_items(collector=self, entry=self.entry):
            yield from items


class DistevalItem(pytest.Item):
    kind = ""
    entry: TaskEntry | None = None

    def __init__(self, *, loc: Loc, metric: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model_node = self.getparent(ModelNode)
        assert model_node is not None
        self.job: EvalJob = model_node.job
        self.loc = loc
        suite, model = model_node.suite, model_node.model
        task = self.entry.name if self.entry else ""
        self.add_marker(pytest.mark.disteval(
            suite=suite.name, model=model.name, backend=model.backend,
            task=self.entry.task if self.entry else "", metric=metric, kind=self.kind))
        self.add_marker(self.kind)
        for name in (*suite.marks, *model.marks, *(self.entry.marks if self.entry else [])):
            self.add_marker(name)
        self.extra_keyword_matches.update(
            k for k in (suite.name, model.name, model.backend, task) if k)

    @property
    def scheduler(self) -> JobScheduler:
        return self.config.stash[SCHEDULER]

    def reportinfo(self) -> tuple[Any, int | None, str]:
        # the failure heading: model::task::metric, the node id without the file
        return self.path, self.loc.line - 1, self.nodeid.split("::", 1)[1]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, DistevalFailure):
            return "\n".join(excinfo.value.lines)
        return super().repr_failure(excinfo)

    def outcome(self) -> JobOutcome:
        self.user_properties.extend([("kind", self.kind), ("model", self.job.name),
                                     ("backend", self.job.model.backend)])
        outcome = self.scheduler.outcome(self.job)
        # --disteval-save-baseline keeps what the job gave (regression/plugin.py)
        self.ihook.pytest_disteval_job_outcome(item=self, outcome=outcome)
        if outcome.skip_reason and not outcome.entries:
            pytest.skip(outcome.skip_reason)
        wall = outcome.wall_s if outcome.wall_s is not None else outcome.recorded_wall_s
        if wall is not None:
            self.user_properties.append(("wall_time_s", round(wall, 3)))
        if outcome.results_path is not None:
            self.user_properties.append(("results", str(outcome.results_path)))
        # from the job record: this session's, or the one stored with cached results
        self.user_properties.extend(jobrecord.gpu_properties(outcome.record))
        imbalance = ((outcome.record or {}).get("gpu") or {}).get("imbalance")
        if imbalance:
            self.user_properties.append(("gpu_imbalance", imbalance))
            if not outcome.warned:
                outcome.warned = True  # once per job, from its first item
                warnings.warn(budgets.DistevalImbalanceWarning(
                    f"GPUs of one group of model {self.job.name!r} were unevenly used: "
                    f"{imbalance}"), stacklevel=1)
        return outcome

    def job_failed(self, outcome: JobOutcome, what: str) -> DistevalFailure:
        failure = outcome.failure
        assert failure is not None
        if not failure.precheck:
            return DistevalFailure([
                f"{what}: no result, the evaluation of model {self.job.name!r} failed",
                *failure.render().splitlines(),
                f"defined at: {self.loc}",
            ])
        # found before any worker started, the same for every item: told once, by the first
        if outcome.told_by is not None and outcome.told_by != self.nodeid:
            return DistevalFailure([f"{what}: no result, model {self.job.name!r} was not "
                                    f"started: see {outcome.told_by}"])
        outcome.told_by = self.nodeid
        first, *rest = failure.render().splitlines()
        return DistevalFailure([f"{what}: no result, {first}", *rest, f"defined at: {self.loc}"])

    def fail_verdict(self, verdict: Verdict) -> None:
        self.user_properties.append(("verdict", "pass" if verdict.passed else "fail"))
        if not verdict.passed:
            raise DistevalFailure([*verdict.lines,
                                   f"model: {self.job.name} ({self.job.model.backend})",
                                   f"defined at: {self.loc}"])


class ThresholdItem(DistevalItem):
    kind = "threshold"

    def __init__(self, *, threshold: Threshold, **kwargs: Any) -> None:
        self.threshold = threshold
        task_node = kwargs["parent"]
        self.entry = task_node.entry
        super().__init__(loc=threshold.loc, metric=threshold.metric, **kwargs)

    def runtest(self) -> None:
        assert self.entry is not None
        t = self.threshold
        # what the item is, before the job runs: a skipped item keeps it too
        self.user_properties.extend([("task", self.entry.name), ("metric", t.metric)])
        outcome = self.outcome()
        stored = outcome.entries.get(self.entry.name)
        if stored is None:
            raise self.job_failed(outcome, f"{self.entry.task} {t.written}")
        self.user_properties.append(("cached", self.entry.name in outcome.cached))
        self.user_properties.append(("eval_s", round(float(stored["timing"]["eval_s"]), 3)))
        try:
            score = read_score(stored["lm_eval"], self.entry.task, t.metric)
        except MissingMetric as exc:
            self.user_properties.append(("verdict", "fail"))
            raise DistevalFailure([str(exc), f"defined at: {self.loc}"]) from None
        verdict = check_threshold(t, score)
        self.user_properties.extend([
            ("score", score.value),
            ("stderr", score.stderr if score.stderr is not None else "N/A"),
            ("n_samples", score.n if score.n is not None else ""),
            ("bound", verdict.required),
            ("margin", round(verdict.margin, 6)),
            ("defined_at", str(self.loc)),
        ])
        if self.entry.partial:
            # a limited run scores part of the task: every report says so
            limit = self.entry.limit if self.entry.samples is None else len(self.entry.samples)
            self.user_properties.extend([("partial", True), ("limit", limit)])
            if self.entry.limit_seed is not None:
                self.user_properties.append(("limit_seed", self.entry.limit_seed))
            note = overrides.small_n_note(score.n, score.stderr, t.tolerance)
            if note is not None:
                self.user_properties.append(("limit_note", note))
                verdict.lines.append(f"warning: {note}")
        self.fail_verdict(verdict)


class BudgetItem(DistevalItem):
    """One budget: a job's (``model::kind``) or a task entry's (``model::entry::task_time``)."""

    kind = "budget"

    def __init__(self, *, budget: Budget, **kwargs: Any) -> None:
        self.budget = budget
        parent = kwargs["parent"]
        if isinstance(parent, TaskNode):
            self.entry = parent.entry
        super().__init__(loc=budget.loc, metric=budget.kind, **kwargs)

    def runtest(self) -> None:
        kind = self.budget.kind
        spec = budgets.KINDS[kind]
        self.user_properties.extend([("budget", kind), ("unit", spec.unit)])
        if self.entry is not None:
            self.user_properties.append(("task", self.entry.name))
        limit = self.config.stash[SETTINGS].overrides.limit
        if limit is not None:
            # a quick look runs part of each task: what it measures says nothing of the job's
            pytest.skip(f"--disteval-limit {limit}: a budget is measured on the whole job; "
                        "run without the limit to check it")
        outcome = self.outcome()
        what = f"budget {kind}" + (f" of {self.entry.name}" if self.entry else "")
        if outcome.failure is not None and (self.entry is None
                                            or self.entry.name not in outcome.entries):
            raise self.job_failed(outcome, what)
        record = outcome.record
        try:
            measured = budgets.measure(kind, record, self.entry.name if self.entry else None)
        except budgets.Unmeasured as exc:
            pytest.skip(str(exc))
        assert record is not None
        verdict = budgets.check(kind, self.budget.limit, measured, self.budget.written,
                                budgets.detail(kind, record, self.budget.written))
        self.user_properties.extend([("measured", budgets.property_value(kind, measured)),
                                     ("bound", verdict.required),
                                     ("cached", bool(record.get("cached"))),
                                     ("defined_at", str(self.loc))])
        self.user_properties.append(("verdict", "pass" if verdict.passed else "fail"))
        if not verdict.passed:
            raise DistevalFailure([*verdict.lines,
                                   f"model: {self.job.name} ({self.job.model.backend})",
                                   f"defined at: {self.loc}"])
