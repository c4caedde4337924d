"""A suite's parts as dataclasses: models, task entries, thresholds, budgets, tolerances."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_disteval import backends
from pytest_disteval.suite.localtasks import LocalTask, TaskIndex

FORMAT_VERSION = 1
# the backends suites may name, and the model_args key naming each one's weights
BACKENDS = tuple(backends.BACKENDS)
MODEL_KEY = {name: backend.weights_key for name, backend in backends.BACKENDS.items()}
# lm-eval 0.4.13's own defaults (simple_evaluate, the CLI's --seed 0,1234,1234,1234): a
# setting at its default stays out of an entry's settings, so its cache key is as before
LM_EVAL_DEFAULTS: dict[str, Any] = {
    "apply_chat_template": False,
    "system_instruction": None,
    "fewshot_as_multiturn": False,  # the CLI's: on with a chat template unless set false
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "gen_kwargs": None,
    "bootstrap_iters": 100000,
    "metadata": None,
}
# the simple_evaluate arguments a suite sets per model or per task entry (besides
# num_fewshot, limit and fewshot_seed); each one call's, so entries differing in one
# are separate calls
EVAL_KEYS = tuple(LM_EVAL_DEFAULTS)


@dataclass(frozen=True)
class Loc:
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class SuiteError(ValueError):
    """One or more problems in one suite file; ``str()`` lists them all."""

    def __init__(self, path: Path, problems: list[tuple[int, str, str]]) -> None:
        self.path = path
        self.problems = problems  # (line, key path, message)
        lines = [f"{path}:{line}: {key}: {msg}" if key else f"{path}:{line}: {msg}"
                 for line, key, msg in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Threshold:
    metric: str  # lm-eval's key, "acc,none" or "exact_match,strict-match"
    written: str  # as the user wrote it ("acc")
    min: float | None
    max: float | None
    tolerance: float  # in units of the metric's stderr
    direction_given: bool  # min/max written explicitly (else from higher_is_better)
    loc: Loc

    @property
    def metric_name(self) -> str:
        return self.metric.split(",", 1)[0]

    @property
    def filter(self) -> str:
        return self.metric.split(",", 1)[1]


@dataclass(frozen=True)
class Tolerance:
    """A change toward worse that never fails a regression item (``regression:`` keys)."""

    abs: float = 0.0  # in the metric's units
    rel: float = 0.0  # a fraction of the baseline's score
    loc: Loc | None = None  # where it was written; None: nowhere (no tolerance)

    def allowed(self, baseline: float) -> float:
        # either one suffices: the more lenient of the two
        return max(self.abs, self.rel * abs(baseline))


@dataclass(frozen=True)
class Budget:
    kind: str  # a key of budgets.KINDS
    limit: float  # seconds, per second, bytes or percent (budgets.KINDS[kind].unit)
    written: str
    loc: Loc


@dataclass
class TaskEntry:
    name: str  # node name; defaults to the task
    task: str  # lm-eval task or group name
    num_fewshot: int | None
    limit: int | float | None
    fewshot_seed: int
    thresholds: list[Threshold]
    marks: list[str]
    loc: Loc
    local: LocalTask | None = None
    budgets: list[Budget] = field(default_factory=list)  # the entry's own (task_time)
    # metric -> tolerance of its regression item, besides the thresholds' metrics;
    # None: ``regression: false``, no regression items for this entry
    regression: dict[str, Tolerance] | None = field(default_factory=dict)
    regression_default: Tolerance = Tolerance()
    # EVAL_KEYS as resolved for this entry (its own, else its model's, else defaults:);
    # absent: lm-eval's default. fewshot_as_multiturn as written (None: the CLI's rule)
    evaluation: dict[str, Any] = field(default_factory=dict)
    # lm-eval's per-task doc ids (simple_evaluate's samples=); never with a limit
    samples: tuple[int, ...] | None = None
    # with a limit: that many doc ids drawn at random with this seed, in the worker
    limit_seed: int | None = None
    samples_at: Loc | None = None  # where ``samples`` was written: out-of-range ids name it
    # lm-eval's confirm_run_unsafe_code: the entry's own, else its model's (suite/unsafe.py)
    confirm_run_unsafe_code: bool = False

    def eval_setting(self, key: str) -> Any:
        """The value ``simple_evaluate`` gets for ``key`` (one of EVAL_KEYS)."""
        if key == "fewshot_as_multiturn":
            # lm-eval's CLI: on with a chat template unless set false; never without one
            template = bool(self.evaluation.get("apply_chat_template"))
            written = self.evaluation.get("fewshot_as_multiturn")
            return template and (True if written is None else bool(written))
        return self.evaluation.get(key, LM_EVAL_DEFAULTS[key])

    def settings(self) -> dict[str, Any]:
        """What lm-eval must be told, besides the task, to reproduce this entry's score."""
        out: dict[str, Any] = {"num_fewshot": self.num_fewshot, "limit": self.limit,
                               "fewshot_seed": self.fewshot_seed}
        for key in EVAL_KEYS:
            value = self.eval_setting(key)
            if value != LM_EVAL_DEFAULTS[key]:
                out[key] = value
        # only when set: the keys of entries without them stay what they were
        if self.samples is not None:
            out["samples"] = list(self.samples)
        if self.limit_seed is not None:
            out["limit_seed"] = self.limit_seed
        if self.confirm_run_unsafe_code:
            out["confirm_run_unsafe_code"] = True
        return out

    @property
    def partial(self) -> bool:
        """Scored on part of the task's documents (a limit or chosen doc ids)."""
        return self.limit is not None or self.samples is not None


@dataclass
class ModelSpec:
    name: str
    backend: str
    model_args: dict[str, Any]
    batch_size: int | str
    device: str | None
    gen_kwargs: dict[str, Any] | None
    tasks: list[TaskEntry]
    budgets: list[Budget]
    marks: list[str]
    timeout: float | None
    loc: Loc
    tp: int | str | None = None  # an int or "auto"; None: from the command line or 1
    pp: int | None = None
    dp: int | None = None
    required: bool = False  # fail, rather than skip, when the backend is not installed
    max_batch_size: int | None = None  # lm-eval's: the ceiling of batch_size auto
    # the EVAL_KEYS (and fewshot_seed) written on the model: its entries inherit them
    evaluation: dict[str, Any] = field(default_factory=dict)
    confirm_run_unsafe_code: bool = False  # run tasks that execute model code (suite/unsafe.py)

    @property
    def weights(self) -> str:
        """The model's path or id (``pretrained``, or ``path`` for nemo_lm)."""
        return str(self.model_args[MODEL_KEY[self.backend]])


@dataclass
class Suite:
    path: Path
    name: str
    include_paths: list[Path]
    workdir: Path
    models: list[ModelSpec]
    marks: list[str] = field(default_factory=list)
    task_index: TaskIndex | None = None
