"""Collection nodes: suite file -> model -> task -> threshold items; budgets per model.

Node ids read ``suites/smoke.yaml::tiny-arith::arith_mc::acc`` and
``suites/smoke.yaml::tiny-arith::wall_time``. Every item carries the marker
``disteval(suite=, model=, backend=, task=, metric=, kind=)`` so ``-m`` can
select on any of them, and the names are ``-k`` keywords.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from . import overrides
from .gates import MissingMetric, Verdict, check_budget, check_threshold, read_score
from .jobs import EvalJob
from .scheduler import JobOutcome, JobScheduler
from .state import SCHEDULER, SETTINGS
from .suite import Budget, Loc, ModelSpec, Suite, SuiteError, TaskEntry, Threshold, load_suite


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
            yield BudgetItem.from_parent(self, name=budget.kind, budget=budget)


class TaskNode(pytest.Collector):
    def __init__(self, *, entry: TaskEntry, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entry = entry

    def collect(self) -> Iterator[pytest.Item]:
        for threshold in self.entry.thresholds:
            yield ThresholdItem.from_parent(self, name=threshold.written, threshold=threshold)


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
        if outcome.skip_reason and not outcome.entries:
            pytest.skip(outcome.skip_reason)
        wall = outcome.wall_s if outcome.wall_s is not None else outcome.recorded_wall_s
        if wall is not None:
            self.user_properties.append(("wall_time_s", round(wall, 3)))
        if outcome.results_path is not None:
            self.user_properties.append(("results", str(outcome.results_path)))
        if outcome.gpu is not None:
            self.user_properties.append(("gpu_mean_util_pct", outcome.gpu["mean_util_pct"]))
            self.user_properties.append(("gpu_peak_mem_gib",
                                         round(outcome.gpu["peak_mem_bytes"] / 2**30, 2)))
        return outcome

    def job_failed(self, outcome: JobOutcome, what: str) -> DistevalFailure:
        assert outcome.failure is not None
        return DistevalFailure([
            f"{what}: no result, the evaluation of model {self.job.name!r} failed",
            *outcome.failure.render().splitlines(),
            f"defined at: {self.loc}",
        ])

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
        if self.entry.limit is not None:
            # a limited run scores part of the task: every report says so
            self.user_properties.extend([("partial", True), ("limit", self.entry.limit)])
            note = overrides.small_n_note(score.n, score.stderr, t.tolerance)
            if note is not None:
                self.user_properties.append(("limit_note", note))
                verdict.lines.append(f"warning: {note}")
        self.fail_verdict(verdict)


class BudgetItem(DistevalItem):
    kind = "budget"

    def __init__(self, *, budget: Budget, **kwargs: Any) -> None:
        self.budget = budget
        super().__init__(loc=budget.loc, metric=budget.kind, **kwargs)

    def runtest(self) -> None:
        self.user_properties.append(("budget", self.budget.kind))
        limit = self.config.stash[SETTINGS].overrides.limit
        if limit is not None:
            # a quick look runs part of each task: its wall time says nothing of the job's
            pytest.skip(f"--disteval-limit {limit}: a budget is measured on the whole job; "
                        "run without the limit to check it")
        outcome = self.outcome()
        if outcome.failure is not None:
            raise self.job_failed(outcome, f"budget {self.budget.kind}")
        measured = outcome.wall_s if outcome.wall_s is not None else outcome.recorded_wall_s
        if measured is None:
            why = ("only part of the job ran in this session, the rest came from the store"
                   if outcome.partial else
                   "the results came from the store, and no wall time was recorded for this "
                   "set of tasks")
            pytest.skip(f"{why}; run with --disteval-no-cache to measure the whole job")
        verdict = check_budget(self.budget, measured)
        self.user_properties.extend([("measured", round(measured, 3)),
                                     ("bound", verdict.required),
                                     ("cached", outcome.wall_s is None),
                                     ("defined_at", str(self.loc))])
        self.fail_verdict(verdict)
