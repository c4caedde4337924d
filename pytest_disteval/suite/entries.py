"""Task entries of a suite: settings, documents, thresholds, tolerances, consent."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_disteval.items.budgets import KINDS as BUDGET_SPECS
from pytest_disteval.items.budgets import parse_limit
from pytest_disteval.suite import yamlpos
from pytest_disteval.suite.checks import (
    METRIC_RANGES,
    _keys,
    _marks,
    _name_rule,
    _optional_mapping,
    _Problems,
    _valid_name,
)
from pytest_disteval.suite.evalkeys import (
    _check_template_name,
    _eval_settings,
    _fewshot_seed_spelling,
)
from pytest_disteval.suite.localtasks import LocalTask, LocalTaskError, TaskIndex
from pytest_disteval.suite.model import (
    EVAL_KEYS,
    Budget,
    Loc,
    ModelSpec,
    TaskEntry,
    Threshold,
    Tolerance,
)
from pytest_disteval.suite.unsafe import KEY as UNSAFE_KEY
from pytest_disteval.suite.unsafe import unsafe_reason


def _budgets(raw: yamlpos.PosDict, where: str, definition: str, problems: _Problems,
             example: str) -> list[Budget]:
    """The ``budgets`` mapping of a model (every kind) or a task entry (``task_budgets``)."""
    raw_budgets = _optional_mapping(raw, "budgets", where, example, problems)
    if raw_budgets is None:
        return []
    kinds = _keys(definition)
    problems.unknown_keys(raw_budgets, kinds, f"{where}.budgets.")
    budgets = []
    for kind in kinds:
        if kind in raw_budgets:
            try:
                limit = parse_limit(kind, raw_budgets[kind])
            except ValueError as exc:
                problems.add(raw_budgets.line_of(kind), f"{where}.budgets.{kind}",
                             f"{exc} ({kind} takes {BUDGET_SPECS[kind].forms})")
                continue
            budgets.append(Budget(kind, limit, str(raw_budgets[kind]),
                                  Loc(problems.path, raw_budgets.line_of(kind))))
    return budgets


def _int_setting(raw: dict[str, Any], defaults: dict[str, Any], key: str, where: str,
                 line: int, problems: _Problems, *, allow_fraction: bool = False) -> Any:
    value = raw.get(key, defaults.get(key))
    if value is None:
        return None
    # limit: lm-eval reads a float below 1 as a fraction of the documents, else a count
    least = 1 if allow_fraction else 0
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
    if allow_fraction and isinstance(value, float) and 0 < value < 1:
        ok = True
    if not ok:
        valid = ("a whole number >= 1 or a fraction in (0, 1)" if allow_fraction
                 else "a non-negative integer")
        problems.add(line, f"{where}{key}", f"{value!r} is not valid: {valid}")
        return None
    return value


@dataclass(frozen=True)
class _Inherited:
    """What a task entry inherits: its model's eval keys, then the suite's ``defaults``."""

    model: ModelSpec
    defaults: dict[str, Any]  # the eval keys of ``defaults``, checked once
    seed_key: str  # the spelling ``defaults`` writes its few-shot seed under


def _entry_evaluation(raw: yamlpos.PosDict, where: str, inherited: _Inherited,
                      problems: _Problems) -> dict[str, Any]:
    """The entry's eval keys: its own, else its model's, else ``defaults``'; mappings
    (gen_kwargs, metadata) merge key by key in that order."""
    own = _eval_settings(raw, f"{where}.", problems)
    model = inherited.model
    merged: dict[str, Any] = {}
    for key in EVAL_KEYS:
        layers = [inherited.defaults.get(key), model.evaluation.get(key), own.get(key)]
        if key == "gen_kwargs":
            # the model's own gen_kwargs reach the worker as the spec's; an entry's (or
            # defaults') go on top of them: one dict for the entry's one call
            if own.get(key) is not None or inherited.defaults.get(key) is not None:
                merged[key] = {**(model.gen_kwargs or {}), **(layers[0] or {}),
                               **(layers[2] or {})}
        elif key == "metadata":
            if any(layers):
                merged[key] = {k: v for layer in layers if layer for k, v in layer.items()}
        else:
            chosen = next((layer for layer in reversed(layers) if layer is not None), None)
            if chosen is not None:
                merged[key] = chosen
    if merged.get("fewshot_as_multiturn") and not merged.get("apply_chat_template"):
        at = raw if "fewshot_as_multiturn" in raw else None
        line = at.line_of("fewshot_as_multiturn") if at is not None else raw.line
        problems.add(line, f"{where}.fewshot_as_multiturn",
                     "true needs a chat template: set apply_chat_template too (lm-eval's "
                     "CLI refuses --fewshot_as_multiturn without --apply_chat_template)")
    return merged


def _task(raw: Any, where: str, line: int, defaults: yamlpos.PosDict, index: TaskIndex,
          shown: Path, problems: _Problems, require_thresholds: bool,
          inherited: _Inherited) -> TaskEntry | None:
    if not isinstance(raw, yamlpos.PosDict) or "task" not in raw:
        problems.add(line, where, "a task entry is a mapping with 'task' (an lm-eval task name) "
                     "and 'thresholds'")
        return None
    problems.unknown_keys(raw, _keys("task"), f"{where}.")
    task = raw["task"]
    if not isinstance(task, str) or not task:
        problems.add(raw.line_of("task"), f"{where}.task", "must be an lm-eval task or group name")
        return None
    name = raw.get("name", task)
    if not _valid_name(name):
        problems.add(raw.line_of("name"), f"{where}.name",
                     f"{name!r} is not valid: {_name_rule(name)}")
        name = task
    # a name not found locally may be one of lm-eval's ~14k built-in tasks: indexing
    # those costs seconds, so the worker checks it (before the model loads)
    try:
        local = index.resolve(task)
    except LocalTaskError as exc:
        problems.add(raw.line_of("task"), f"{where}.task",
                     f"task {task!r} is defined in {exc.path}:{exc.line}, which cannot be "
                     f"used: {exc.problem}")
        return None
    num_fewshot = _int_setting(raw, defaults, "num_fewshot", f"{where}.",
                               raw.line_of("num_fewshot"), problems)
    limit = _int_setting(raw, defaults, "limit", f"{where}.", raw.line_of("limit"), problems,
                         allow_fraction=True)
    seed_key = _fewshot_seed_spelling(raw, f"{where}.", problems)
    seed = _int_setting(raw, {}, seed_key, f"{where}.", raw.line_of(seed_key), problems)
    if seed is None and seed_key not in raw:
        seed = inherited.model.evaluation.get("fewshot_seed")
        if seed is None:
            seed = _int_setting(defaults, {}, inherited.seed_key, "defaults.",
                                defaults.line_of(inherited.seed_key)
                                if inherited.seed_key in defaults else raw.line, problems)
    evaluation = _entry_evaluation(raw, where, inherited, problems)
    if "apply_chat_template" in raw:
        _check_template_name(raw, f"{where}.", evaluation, inherited.model.model_args,
                             inherited.model.backend, problems)
    samples = _samples(raw, where, problems)
    limit_seed = _int_setting(raw, defaults, "limit_seed", f"{where}.", raw.line_of("limit_seed"),
                              problems)
    if samples is not None and limit is not None:
        # lm-eval refuses both in one call: say so where they were written
        problems.add(raw.line_of("samples"), f"{where}.samples",
                     "cannot be combined with 'limit' (lm-eval takes one or the other): "
                     "drop the limit, or the samples")
    if limit_seed is not None and limit is None:
        problems.add(raw.line_of("limit_seed"), f"{where}.limit_seed",
                     "draws 'limit' documents at random: it needs a 'limit' beside it")
    if local is not None:
        _check_data_files(local, raw, where, problems)
    thresholds: list[Threshold] = []
    raw_thresholds = _optional_mapping(raw, "thresholds", where, "{acc: 0.5} (metric -> bound)",
                                       problems)
    # once per entry, not per use; None: checked after the run, as for a built-in task
    known = local.metric_keys() if local is not None and local.metrics_known else None
    if raw_thresholds is not None:
        for metric, spec in raw_thresholds.items():
            if not _finite_bounds(spec, f"{where}.thresholds.{metric}",
                                  raw_thresholds.line_of(metric), problems):
                continue
            t = _threshold(str(metric), spec, f"{where}.thresholds.{metric}",
                           raw_thresholds.line_of(metric), known, shown, problems)
            if t is not None:
                thresholds.append(t)
    marks = _marks(raw, "marks", f"{where}.", problems)
    budgets = _budgets(raw, where, "task_budgets", problems, "{task_time: 2m}")
    default_tolerance = _tolerance(defaults.get("regression"), "defaults.regression",
                                   getattr(defaults, "key_lines", {}).get("regression", raw.line),
                                   shown, problems)
    regression = _regression(raw, where, known,
                             shown, problems)
    if require_thresholds and not thresholds and raw.get("thresholds") is None \
            and not budgets:
        problems.add(raw.line, where, f"task entry {name!r} has no thresholds: nothing would "
                     "be tested; add e.g. thresholds: {acc: 0.5}")
    return TaskEntry(name, task, num_fewshot, limit, 1234 if seed is None else seed,
                     thresholds, marks, Loc(shown, raw.line), local, budgets, regression,
                     default_tolerance, evaluation, samples=samples,
                     limit_seed=limit_seed if limit is not None else None,
                     samples_at=None if samples is None else Loc(shown, raw.line_of("samples")))


def _samples(raw: yamlpos.PosDict, where: str, problems: _Problems) -> tuple[int, ...] | None:
    """``samples: [0, 5, 17]``: lm-eval's doc ids, sorted (its logged doc_id assumes so)."""
    value = raw.get("samples")
    if value is None:
        return None
    line = raw.line_of("samples")
    ok = isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        problems.add(line, f"{where}.samples", f"{value!r} is not valid: a non-empty list of "
                     "document ids (whole numbers >= 0), e.g. [0, 5, 17]")
        return None
    if len(set(value)) != len(value):
        dup = sorted({v for v in value if value.count(v) > 1})
        problems.add(line, f"{where}.samples", f"document ids {dup} appear twice: each id "
                     "once (lm-eval scores a document once)")
        return None
    return tuple(sorted(value))


def _tolerance(spec: Any, where: str, line: int, shown: Path,
               problems: _Problems) -> Tolerance:
    """``{abs: 0.01, rel: 0.02}`` (either or both, or nothing) -> Tolerance."""
    if spec is None:
        return Tolerance()
    if not isinstance(spec, yamlpos.PosDict):
        problems.add(line, where, f"{spec!r} is not a tolerance: write a mapping such as "
                     "{abs: 0.01} (an allowed drop in the metric's units) and/or {rel: 0.02} "
                     "(a fraction of the baseline score), or nothing for none")
        return Tolerance()
    problems.unknown_keys(spec, _keys("tolerance"), f"{where}.")
    values = {}
    for key in ("abs", "rel"):
        v = spec.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v < 0:
            problems.add(spec.line_of(key), f"{where}.{key}",
                         f"{v!r} is not valid: a finite number >= 0")
            v = 0.0
        values[key] = float(v)
    return Tolerance(values["abs"], values["rel"], Loc(shown, line))


def _regression(raw: yamlpos.PosDict, where: str, known: dict[str, bool] | None, shown: Path,
                problems: _Problems) -> dict[str, Tolerance] | None:
    """A task entry's ``regression:``: false, or metric -> tolerance (or nothing)."""
    spec = raw.get("regression")
    if spec is False:
        return None
    if spec is None or spec is True:
        return {}
    if not isinstance(spec, yamlpos.PosDict):
        problems.add(raw.line_of("regression"), f"{where}.regression",
                     "must be false or a mapping metric -> tolerance, e.g. "
                     "{acc: {abs: 0.01}, acc_norm: {rel: 0.02}, exact_match: {}}")
        return {}
    out: dict[str, Tolerance] = {}
    for metric, tol in spec.items():
        key = str(metric) if "," in str(metric) else f"{metric},none"
        line = spec.line_of(metric)
        if known is not None and key not in known:
            written = sorted(k[:-5] if k.endswith(",none") else k for k in known)
            hint = difflib.get_close_matches(str(metric), written, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.add(line, f"{where}.regression.{metric}",
                         f"the task does not produce metric {metric!r}{did}; "
                         f"it produces: {', '.join(written) or 'none'}")
            continue
        tolerance = _tolerance(tol, f"{where}.regression.{metric}", line, shown, problems)
        out[key] = tolerance if tolerance.loc is not None else Tolerance(loc=Loc(shown, line))
    return out


def _consent(raw: yamlpos.PosDict, where: str, problems: _Problems) -> bool | None:
    """``confirm_run_unsafe_code`` of a model or task entry: True, False, or None (not given)."""
    value = raw.get(UNSAFE_KEY)
    if value is None or isinstance(value, bool):
        return value
    problems.add(raw.line_of(UNSAFE_KEY), f"{where}.{UNSAFE_KEY}",
                 f"{value!r} is not valid: true or false (true lets lm-eval run code the "
                 "model writes, on this machine; see docs/suites.md#tasks-that-run-model-code)")
    return None


def _check_unsafe(raw: yamlpos.PosDict, entry: TaskEntry, model: ModelSpec, where: str,
                  model_where: str, index: TaskIndex, problems: _Problems,
                  seen: dict[str, str | None]) -> None:
    """Set the entry's consent (its own, else its model's); refuse an unsafe task without it."""
    own = _consent(raw, where, problems) if UNSAFE_KEY in raw else None
    entry.confirm_run_unsafe_code = model.confirm_run_unsafe_code if own is None else own
    if entry.confirm_run_unsafe_code:
        return
    if entry.task not in seen:
        seen[entry.task] = unsafe_reason(entry.task, index)
    why = seen[entry.task]
    if why is None:
        return
    if own is False:
        at, fix = raw.line_of(UNSAFE_KEY), f"remove the entry or set {UNSAFE_KEY}: true"
    else:
        at = raw.line_of("task")
        fix = (f"to run it, add '{UNSAFE_KEY}: true' to model {model.name!r} "
               f"({model_where}, line {model.loc.line}) or to this task entry")
    problems.add(at, f"{where}.task",
                 f"task {entry.task!r} runs code the model writes ({why}); lm-eval runs it only "
                 f"with consent: {fix}, and read docs/suites.md#tasks-that-run-model-code first")


def _check_data_files(local: LocalTask, raw: yamlpos.PosDict, where: str,
                      problems: _Problems) -> None:
    # checked against the workdir at run time too; here only an absolute miss is certain
    for spec in local.missing_absolute_data_files():
        problems.add(raw.line_of("task"), f"{where}.task",
                     f"task {local.name!r} ({local.path}) reads data file {spec!r}, "
                     "which does not exist")


def _finite_bounds(spec: Any, where: str, line: int, problems: _Problems) -> bool:
    """False (and reported) when a bound or tolerance is nan or infinite: a gate that either
    cannot pass (nan, or a bound at infinity) or cannot fail (an infinite tolerance)."""
    values = ([(None, line, spec)] if not isinstance(spec, yamlpos.PosDict) else
              [(k, spec.line_of(k), spec[k]) for k in ("min", "max", "tolerance") if k in spec])
    ok = True
    for key, at, value in values:
        if isinstance(value, float) and not math.isfinite(value):
            what = ("a tolerance" if key == "tolerance" else "a bound") + f" of {value!r}"
            problems.add(at, f"{where}.{key}" if key else where,
                         f"{what} is not valid: write a finite number (a gate at nan or "
                         "infinity always fails or always passes)")
            ok = False
    return ok


def _threshold(metric: str, spec: Any, where: str, line: int, known: dict[str, bool] | None,
               shown: Path, problems: _Problems) -> Threshold | None:
    key = metric if "," in metric else f"{metric},none"
    if known is not None and key not in known:
        written = sorted(k[:-5] if k.endswith(",none") else k for k in known)
        hint = difflib.get_close_matches(metric, written, n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.add(line, where, f"the task does not produce metric {metric!r}{did}; "
                     f"it produces: {', '.join(written) or 'none'}")
        return None
    lo = hi = None
    tolerance = 0.0
    given = True
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        lo = float(spec)
        given = False  # the direction comes from higher_is_better
    elif isinstance(spec, yamlpos.PosDict):
        problems.unknown_keys(spec, _keys("threshold"), f"{where}.")
        for bound in ("min", "max", "tolerance"):
            v = spec.get(bound)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or math.isnan(v)):
                problems.add(spec.line_of(bound), f"{where}.{bound}", f"{v!r} is not a number")
                return None
        lo = None if spec.get("min") is None else float(spec["min"])
        hi = None if spec.get("max") is None else float(spec["max"])
        tolerance = float(spec.get("tolerance") or 0.0)
        if lo is None and hi is None:
            problems.add(line, where, "a threshold needs 'min' or 'max' (or both)")
            return None
        if lo is not None and hi is not None and lo > hi:
            problems.add(line, where, f"min {lo} is above max {hi}")
            return None
        if tolerance < 0:
            problems.add(spec.line_of("tolerance"), f"{where}.tolerance",
                         "must be >= 0 (a number of standard errors)")
            return None
    else:
        problems.add(line, where, f"{spec!r} is not a threshold: write a number (a bound in the "
                     "direction of higher_is_better) or a mapping with min / max / tolerance")
        return None
    if known is not None and not given and not known[key]:
        lo, hi = None, lo  # shorthand on a lower-is-better metric is a maximum
        given = True
    name = key.split(",", 1)[0]
    span = METRIC_RANGES.get(name)
    if span is not None:
        for side, value in (("min", lo), ("max", hi)):
            if value is not None and not span[0] <= value <= span[1]:
                at = spec.line_of(side) if isinstance(spec, yamlpos.PosDict) else line
                never = "pass" if (value > span[1]) == (side == "min") else "fail"
                percent = (f"; for {value:g}% write {value / 100:g}"
                           if side == "min" and span == (0.0, 1.0) and 1 < value <= 100 else "")
                problems.add(at, where, f"{side} {value:g} is outside the range of {name}, "
                             f"[{span[0]:g}, {span[1]:g}]: the item could never {never}{percent}")
                return None
    return Threshold(key, metric, lo, hi, tolerance, given, Loc(shown, line))
