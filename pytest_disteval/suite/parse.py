"""Suite files -> validated dataclasses, every error with ``file:line`` and key.

A YAML file is a suite when its top level has the key ``disteval`` (the format
version). Everything else in a repository (CI configs, lm-eval task YAMLs) is
left alone: ``is_suite`` decides that from the text, without parsing it.

The accepted keys are listed once, in ``suite.schema.json`` beside this module;
the validator reads them from there so the schema editors use and the rules
enforced here cannot drift apart.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pytest_disteval.items.budgets import KINDS as BUDGET_SPECS
from pytest_disteval.items.budgets import parse_limit
from pytest_disteval.suite import yamlpos
from pytest_disteval.suite.chatfiles import missing_template
from pytest_disteval.suite.localtasks import LocalTask, LocalTaskError, TaskIndex
from pytest_disteval.suite.model import (
    BACKENDS,
    EVAL_KEYS,
    FORMAT_VERSION,
    MODEL_KEY,
    Budget,
    Loc,
    ModelSpec,
    Suite,
    SuiteError,
    TaskEntry,
    Threshold,
    Tolerance,
)
from pytest_disteval.suite.unsafe import KEY as UNSAFE_KEY
from pytest_disteval.suite.unsafe import unsafe_reason
from pytest_disteval.units import parse_duration

SCHEMA_PATH = Path(__file__).with_name("suite.schema.json")

_SUITE_MARKER = re.compile(r"^disteval[ \t]*:", re.M)
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:", re.M)
# the metrics whose range lm-eval fixes: its registry's means of per-document 0/1 scores,
# and Matthews' correlation; other metrics (f1, bleu, perplexity, a task's own) unchecked
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("acc", "acc_norm", "acc_mutual_info", "acc_bytes", "acc_all",
                     "exact_match"), (0.0, 1.0)),
    "mcc": (-1.0, 1.0),
}
NAME_RULE = "use letters (of any script), digits and . _ + -"


def is_suite(path: Path) -> bool:
    """True when ``path`` is a YAML file with a top-level ``disteval:`` key, or one that
    looks like a suite without it (see ``looks_like_a_suite``): parsing that one reports
    the missing marker, where skipping it would pass a gate that checked nothing."""
    if path.suffix not in {".yaml", ".yml"}:
        return False
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 16)
    except OSError:
        return False
    return bool(_SUITE_MARKER.search(text)) or looks_like_a_suite(text)


def looks_like_a_suite(text: str) -> bool:
    """Top-level ``models:`` and ``tasks:``, or ``models:`` and a near miss of ``disteval``
    (``diseval: 1``): no lm-eval task or group file, nor a CI config, has those."""
    keys = set(_TOP_LEVEL_KEY.findall(text))
    return "models" in keys and (
        "tasks" in keys or bool(difflib.get_close_matches("disteval", keys, n=1, cutoff=0.75)))


def not_a_suite(text: str) -> str:
    """Why a YAML file named on the command line is not collected, for its error."""
    keys = set(_TOP_LEVEL_KEY.findall(text))
    what = ("an lm-eval task file: name its task in a suite's 'tasks' and the suite's "
            "'include' its directory" if "task" in keys
            else "not a disteval suite")
    return f"{what}; a suite file has a top-level 'disteval: 1' (the format version) and 'models'"


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _keys(definition: str) -> tuple[str, ...]:
    node = schema() if definition == "suite" else schema()["$defs"][definition]
    return tuple(node["properties"])


SEED_KEYS = ("random_seed", "numpy_random_seed", "torch_random_seed")
SEED_RANGE = 2**32  # numpy's seeds are 0 .. 2**32 - 1; lm-eval passes each one as given
# lm-eval's spelling of the entry's fewshot_seed (simple_evaluate's fewshot_random_seed)
FEWSHOT_SEED_ALIAS = "fewshot_random_seed"


def _eval_value(key: str, value: Any) -> str | None:
    """Why ``value`` is not valid for eval key ``key``; None when it is."""
    if key == "apply_chat_template":
        if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
            return None
        return "true, false, or the name of one of the tokenizer's chat templates"
    if key == "system_instruction":
        return None if isinstance(value, str) else "a string (the system message)"
    if key == "fewshot_as_multiturn":
        return None if isinstance(value, bool) else "true or false"
    if key in SEED_KEYS:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_RANGE
        return None if ok else f"an integer from 0 to {SEED_RANGE - 1}"
    if key == "bootstrap_iters":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "a whole number >= 0 (0: no stderr)"
    if key in ("gen_kwargs", "metadata"):
        example = ("{max_gen_toks: 64, temperature: 0}" if key == "gen_kwargs"
                   else "{max_seq_lengths: [4096]}")
        return None if isinstance(value, dict) else f"a mapping, e.g. {example}"
    raise KeyError(key)


def _eval_settings(raw: yamlpos.PosDict, where: str, problems: _Problems) -> dict[str, Any]:
    """The eval keys written in ``raw`` (a model, ``defaults`` or a task entry), each checked;
    a bad one is reported at its line and left out."""
    out: dict[str, Any] = {}
    for key in EVAL_KEYS:
        if key not in raw or raw[key] is None:
            continue
        why = _eval_value(key, raw[key])
        if why is not None:
            problems.add(raw.line_of(key), f"{where}{key}",
                         f"{raw[key]!r} is not valid: {why} (lm-eval's --{key})")
            continue
        value = raw[key]
        out[key] = dict(value) if isinstance(value, dict) else value
    return out


def _tokenizer_dir(args: dict[str, Any], backend: str) -> Path | None:
    """The local directory of a model's tokenizer files; None: a hub id, or not an HF one."""
    if backend == "nemo_lm":
        return None
    source = args.get("tokenizer") or args.get(MODEL_KEY[backend])
    path = Path(str(source)) if source else None
    return path if path is not None and path.is_absolute() and path.is_dir() else None


def _check_template_name(raw: yamlpos.PosDict, where: str, evaluation: dict[str, Any],
                         args: dict[str, Any], backend: str, problems: _Problems) -> None:
    """A template name (``apply_chat_template: NAME``) the local tokenizer lacks: the
    suite's error, at its line, rather than the worker's after the model loaded."""
    name = evaluation.get("apply_chat_template")
    directory = _tokenizer_dir(args, backend)
    if not isinstance(name, str) or directory is None:
        return
    why = missing_template(directory, name)
    if why is not None:
        problems.add(raw.line_of("apply_chat_template"), f"{where}apply_chat_template",
                     f"{name!r}: {why}")


def _fewshot_seed_spelling(raw: yamlpos.PosDict, where: str, problems: _Problems) -> str:
    """The key ``raw`` writes its few-shot seed under: fewshot_seed or lm-eval's name."""
    if FEWSHOT_SEED_ALIAS not in raw:
        return "fewshot_seed"
    if "fewshot_seed" in raw:
        problems.add(raw.line_of(FEWSHOT_SEED_ALIAS), f"{where}{FEWSHOT_SEED_ALIAS}",
                     "is another spelling of fewshot_seed, which is set here too; keep one")
    return FEWSHOT_SEED_ALIAS


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[int, str, str]] = []

    def add(self, line: int, key: str, message: str) -> None:
        if (line, key, message) not in self.items:  # defaults are read once per entry
            self.items.append((line, key, message))

    def unknown_keys(self, mapping: yamlpos.PosDict, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.add(mapping.line_of(key), f"{where}{key}",
                         f"unknown key{did}; valid keys here: {', '.join(allowed)}")


def _line(container: Any, key: Any, default: int) -> int:
    if isinstance(container, yamlpos.PosDict | yamlpos.PosList):
        return container.line_of(key)
    return default


def load_suite(path: Path, root: Path | None = None) -> Suite:
    """Parse and validate one suite file; raise SuiteError listing every problem."""
    text = path.read_text(encoding="utf-8")
    twin = _results_twin(path)
    if twin is not None:
        marker = re.search(r"^disteval[ \t]*:", text, re.M)
        line = text.count("\n", 0, marker.start()) + 1 if marker else 1
        results = _display_path(path, root).with_suffix("")
        raise SuiteError(_display_path(path, root), [(line, "", (
            f"{path.name} and {twin.name} beside it are both suites: their results would "
            f"share one directory (results/{results}/) and overwrite each other; rename one"))])
    return parse_suite(text, path, root)


def _results_twin(path: Path) -> Path | None:
    """The suite whose results directory this one's would be (``x.yml`` for ``x.yaml``)."""
    # results are named by the suite's path without its suffix (scheduler._write_results)
    other = {".yaml": ".yml", ".yml": ".yaml"}.get(path.suffix)
    twin = path.with_suffix(other) if other else None
    return twin if twin is not None and twin.is_file() and is_suite(twin) else None


def parse_suite(text: str, path: Path, root: Path | None = None, *,
                require_thresholds: bool = True) -> Suite:
    """Validate suite ``text`` as if read from ``path`` (relative paths resolve beside it).

    ``require_thresholds=False`` is for the Python API, whose tests assert themselves.
    """
    shown = _display_path(path, root)
    try:
        data = yamlpos.load(text, path)
    except yamlpos.YamlSyntaxError as exc:
        raise SuiteError(shown, [(exc.line, "", exc.problem)]) from None
    problems = _Problems(shown)
    if not isinstance(data, yamlpos.PosDict):
        raise SuiteError(shown, [(1, "", "a suite is a mapping with keys 'disteval' and 'models'")])
    if "disteval" not in data and not looks_like_a_suite(text):
        raise SuiteError(shown, [(1, "", not_a_suite(text))])
    problems.unknown_keys(data, _keys("suite"), "")
    version = data.get("disteval")
    if "disteval" not in data:
        # beside a misspelling of it, where there is one: the two messages read together
        near = difflib.get_close_matches("disteval", [str(k) for k in data], n=1, cutoff=0.75)
        problems.add(data.line_of(near[0]) if near else 1, "disteval",
                     "missing: a suite says 'disteval: 1' (the format version) at its top "
                     "level; without it the file is not a suite and nothing in it is checked")
    elif version != FORMAT_VERSION:
        problems.add(data.line_of("disteval"), "disteval",
                     f"format version {version!r} is not supported; write 'disteval: 1'")
    suite_dir = path.parent.resolve()

    include_paths: list[Path] = []
    raw_include = data.get("include", [])
    include_list = [raw_include] if isinstance(raw_include, str) else raw_include
    if not isinstance(include_list, list) or not all(isinstance(p, str) for p in include_list):
        problems.add(data.line_of("include"), "include",
                     "must be a directory path or a list of them, relative to the suite file")
        include_list = []
    for i, rel in enumerate(include_list):
        inc = (suite_dir / rel).resolve()
        if not inc.is_dir():
            problems.add(_line(include_list, i, data.line_of("include")), f"include[{i}]",
                         f"directory {rel!r} does not exist (looked for {inc})")
        else:
            include_paths.append(inc)

    workdir = suite_dir
    if "workdir" in data:
        if not isinstance(data["workdir"], str) or not (suite_dir / data["workdir"]).is_dir():
            problems.add(data.line_of("workdir"), "workdir",
                         f"must be an existing directory relative to the suite file, "
                         f"got {data['workdir']!r}")
        else:
            workdir = (suite_dir / data["workdir"]).resolve()

    index = TaskIndex(include_paths)
    unsafe_seen: dict[str, str | None] = {}  # task -> why it runs model code: once per task
    defaults = data.get("defaults", yamlpos.PosDict())
    if not isinstance(defaults, yamlpos.PosDict):
        problems.add(data.line_of("defaults"), "defaults", "must be a mapping")
        defaults = yamlpos.PosDict()
        defaults.key_lines = {}
    else:
        problems.unknown_keys(defaults, _keys("defaults"), "defaults.")
    default_eval = _eval_settings(defaults, "defaults.", problems)
    default_seed_key = _fewshot_seed_spelling(defaults, "defaults.", problems)

    suite_marks = _marks(data, "marks", "", problems)
    shared_tasks = data.get("tasks", [])
    if not isinstance(shared_tasks, list):
        problems.add(data.line_of("tasks"), "tasks", "must be a list of task entries")
        shared_tasks = []

    models: list[ModelSpec] = []
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        problems.add(data.line_of("models"), "models",
                     "required: a non-empty list of models (each with 'backend' and 'model_args')")
        raw_models = []
    seen_models: set[str] = set()
    for i, raw in enumerate(raw_models):
        where = f"models[{i}]"
        line = _line(raw_models, i, data.line_of("models"))
        if not isinstance(raw, yamlpos.PosDict):
            problems.add(line, where, "must be a mapping with 'backend' and 'model_args'")
            continue
        model = _model(raw, where, suite_dir, problems)
        if model is None:
            continue
        if model.name in seen_models:
            problems.add(raw.line_of("name"), f"{where}.name",
                         f"model name {model.name!r} is used twice in this suite; "
                         "give each model a distinct 'name'")
        seen_models.add(model.name)
        model.confirm_run_unsafe_code = _consent(raw, where, problems) or False
        entries: dict[str, TaskEntry] = {}
        own: set[str] = set()
        for src, src_where in ((shared_tasks, "tasks"), (raw.get("tasks", []), f"{where}.tasks")):
            if not isinstance(src, list):
                problems.add(raw.line_of("tasks"), f"{where}.tasks",
                             "must be a list of task entries")
                continue
            for j, raw_task in enumerate(src):
                entry = _task(raw_task, f"{src_where}[{j}]", _line(src, j, line), defaults,
                              index, shown, problems, require_thresholds,
                              _Inherited(model, default_eval, default_seed_key))
                if entry is None:
                    continue
                _check_unsafe(raw_task, entry, model, f"{src_where}[{j}]", where, index,
                              problems, unsafe_seen)
                if entry.name in entries and (src_where == "tasks" or entry.name in own):
                    problems.add(entry.loc.line, f"{src_where}[{j}].name",
                                 f"task entry name {entry.name!r} is used twice; "
                                 "give one of them a distinct 'name' (e.g. arith_mc-3shot)")
                if src_where != "tasks":
                    own.add(entry.name)
                # a model's own entry replaces the suite-wide entry of the same name
                entries[entry.name] = entry
        model.tasks = list(entries.values())
        written = any(isinstance(src, list) and src for src in (shared_tasks, raw.get("tasks")))
        # entries written but refused are reported already: "no tasks" would only be noise
        if not model.tasks and not model.budgets and not written:
            problems.add(line, where, "has no tasks and no budgets: nothing would be tested")
        models.append(model)

    if problems.items:
        raise SuiteError(shown, sorted(problems.items))
    raw_name = data.get("name", path.stem)
    if not _valid_name(raw_name):
        raise SuiteError(shown, [(data.line_of("name"), "name",
                                  f"{raw_name!r} is not a valid suite name: "
                                  f"{_name_rule(raw_name)}")])
    name = raw_name
    return Suite(shown, name, include_paths, workdir, models, suite_marks, index)


def _name_chars(name: Any) -> bool:
    # letters with their marks (Devanagari's vowel signs are marks, not letters) and digits
    return isinstance(name, str) and bool(name) and all(
        c in "_.+-" or unicodedata.category(c)[0] in "LMN" for c in name)


def _valid_name(name: Any) -> bool:
    # NFC only: two spellings of one visible name would be two models, two results files
    return _name_chars(name) and unicodedata.is_normalized("NFC", name)


def _name_rule(name: Any) -> str:
    if _name_chars(name):
        return (f"write it in Unicode's composed form (NFC: "
                f"{unicodedata.normalize('NFC', name)!r}), as editors do")
    return NAME_RULE


def _display_path(path: Path, root: Path | None) -> Path:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return path


def _optional_mapping(raw: yamlpos.PosDict, key: str, where: str, example: str,
                      problems: _Problems) -> yamlpos.PosDict | None:
    """``raw[key]`` when it is a mapping; None when absent or (reported) not a mapping."""
    value = raw.get(key)
    if value is None or isinstance(value, yamlpos.PosDict):
        return value
    problems.add(raw.line_of(key), f"{where}.{key}", f"must be a mapping, e.g. {example}")
    return None


def _marks(raw: yamlpos.PosDict, key: str, where: str, problems: _Problems) -> list[str]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(m, str) and m.isidentifier() for m in value
    ):
        problems.add(raw.line_of(key), f"{where}{key}",
                     "must be a list of pytest marker names (identifiers), e.g. [slow, nightly]")
        return []
    return list(value)


def _model(raw: yamlpos.PosDict, where: str, suite_dir: Path,
           problems: _Problems) -> ModelSpec | None:
    problems.unknown_keys(raw, _keys("model"), f"{where}.")
    backend = raw.get("backend")
    if backend not in BACKENDS:
        hint = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.add(raw.line_of("backend"), f"{where}.backend",
                     f"{'required' if backend is None else repr(backend) + ' is not a backend'}"
                     f"{did}; valid: {', '.join(BACKENDS)}")
        return None
    model_args = raw.get("model_args")
    weights = MODEL_KEY[str(backend)]
    if not isinstance(model_args, yamlpos.PosDict) or not model_args.get(weights):
        problems.add(raw.line_of("model_args"), f"{where}.model_args",
                     f"required: a mapping with at least {weights!r} (a local path or a "
                     "model id)")
        return None
    args = dict(model_args)
    for key in (weights, "tokenizer", "peft"):
        # paths in a suite are relative to the suite file, not to where pytest runs
        value = args.get(key)
        if isinstance(value, str) and (suite_dir / value).exists():
            args[key] = str((suite_dir / value).resolve())
        elif isinstance(value, str) and value.startswith((".", "/")):
            problems.add(model_args.line_of(key), f"{where}.model_args.{key}",
                         f"path {value!r} does not exist "
                         f"(looked for {(suite_dir / value).resolve()})")
    name = raw.get("name")
    if name is None:
        name = Path(str(args[weights])).name
    if not _valid_name(name):
        problems.add(raw.line_of("name"), f"{where}.name",
                     f"{name!r} is not a valid name: {_name_rule(name)}")
        name = str(name)
    batch_size = raw.get("batch_size", 1)
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0) \
            and not (isinstance(batch_size, str) and re.fullmatch(r"auto(:\d+)?", batch_size)):
        problems.add(raw.line_of("batch_size"), f"{where}.batch_size",
                     f"{batch_size!r} is not valid: a positive integer, 'auto' or 'auto:N'")
    device = raw.get("device")
    if device is not None and not isinstance(device, str):
        problems.add(raw.line_of("device"), f"{where}.device",
                     "must be a string such as cpu or cuda")
    gen_kwargs = raw.get("gen_kwargs")
    if gen_kwargs is not None and not isinstance(gen_kwargs, dict):
        problems.add(raw.line_of("gen_kwargs"), f"{where}.gen_kwargs",
                     "must be a mapping, e.g. {max_gen_toks: 64, temperature: 0}")
        gen_kwargs = None
    timeout = None
    if "timeout" in raw:
        try:
            timeout = parse_duration(raw["timeout"])
        except ValueError as exc:
            problems.add(raw.line_of("timeout"), f"{where}.timeout", str(exc))
    budgets = _budgets(raw, where, "budgets", problems, "{wall_time: 10m}")
    marks = _marks(raw, "marks", f"{where}.", problems)
    layout: dict[str, Any] = {}
    for key in ("tp", "pp", "dp"):
        value = raw.get(key)
        if value is None or (key == "tp" and value == "auto"):
            layout[key] = value
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            layout[key] = value
        else:
            valid = "a whole number >= 1" + (" or 'auto'" if key == "tp" else "")
            problems.add(raw.line_of(key), f"{where}.{key}", f"{value!r} is not valid: {valid}")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        problems.add(raw.line_of("required"), f"{where}.required", "must be true or false")
        required = False
    max_batch_size = raw.get("max_batch_size")
    if max_batch_size is not None and not (
            isinstance(max_batch_size, int) and not isinstance(max_batch_size, bool)
            and max_batch_size > 0):
        problems.add(raw.line_of("max_batch_size"), f"{where}.max_batch_size",
                     f"{max_batch_size!r} is not valid: a positive integer, the largest batch "
                     "that batch_size auto tries (lm-eval's --max_batch_size)")
        max_batch_size = None
    evaluation = _eval_settings(raw, f"{where}.", problems)
    evaluation.pop("gen_kwargs", None)  # the model's own gen_kwargs field holds it
    _check_template_name(raw, f"{where}.", evaluation, args, str(backend), problems)
    seed_key = _fewshot_seed_spelling(raw, f"{where}.", problems)
    seed = _int_setting(raw, {}, seed_key, f"{where}.", raw.line_of(seed_key), problems)
    if seed is not None:
        evaluation["fewshot_seed"] = seed
    return ModelSpec(name, str(backend), args, batch_size, device,
                     dict(gen_kwargs) if gen_kwargs else None, [], budgets, marks, timeout,
                     Loc(problems.path, raw.line), layout.get("tp"), layout.get("pp"),
                     layout.get("dp"), required, max_batch_size, evaluation)


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
