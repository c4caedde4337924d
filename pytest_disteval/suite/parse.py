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
import re
from pathlib import Path
from typing import Any

from pytest_disteval.suite import yamlpos
from pytest_disteval.suite.checks import (
    _keys,
    _line,
    _marks,
    _name_rule,
    _Problems,
    _valid_name,
)
from pytest_disteval.suite.entries import (
    _budgets,
    _check_unsafe,
    _consent,
    _Inherited,
    _int_setting,
    _task,
)
from pytest_disteval.suite.evalkeys import (
    _check_template_name,
    _eval_settings,
    _fewshot_seed_spelling,
)
from pytest_disteval.suite.localtasks import TaskIndex
from pytest_disteval.suite.model import (
    BACKENDS,
    FORMAT_VERSION,
    MODEL_KEY,
    Loc,
    ModelSpec,
    Suite,
    SuiteError,
    TaskEntry,
)
from pytest_disteval.units import parse_duration

_SUITE_MARKER = re.compile(r"^disteval[ \t]*:", re.M)
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][\w-]*)[ \t]*:", re.M)


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








def _display_path(path: Path, root: Path | None) -> Path:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return path






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


























