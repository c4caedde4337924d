"""Disk checks: free space, the offline mode, and the models and datasets the workers read.

The workers run offline (HF_HUB_OFFLINE=1), so every model and hub dataset must
already be on disk: a local path or the HF caches. The fixes name the ``hf``
command (huggingface_hub's CLI; the venvs have no ``huggingface-cli``)
that downloads what is missing. The lookups here (``find_weights``,
``unknown_task``) are the scheduler's too: a job whose model or task is missing
fails before its worker starts (jobs/precheck.py).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from pytest_disteval.backends import BACKENDS
from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.jobs.job import EvalJob, missing_data_files
from pytest_disteval.jobs.launch import OFFLINE_ENV
from pytest_disteval.plan.sizing import hub_id_like, local_model_dir
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check
from pytest_disteval.suite.localtasks import TaskIndex
from pytest_disteval.suite.model import MODEL_KEY, ModelSpec
from pytest_disteval.units import format_size

# below this much free space where caches, results or offload go: warn
DISK_WARN_BYTES = 10 * 2**30
# dataset_path values that are lm-eval/datasets builders reading data_files, not hub ids
_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}

DiskUsage = Callable[[Path], int]  # free bytes at a path


def free_space(path: Path) -> int:
    while not path.exists() and path.parent != path:
        path = path.parent  # a directory made later: the disk it will be made on
    return shutil.disk_usage(path).free


def disk(base_dir: Path, jobs: Iterable[EvalJob], environ: Mapping[str, str],
         free_bytes: DiskUsage = free_space) -> list[Check]:
    """Free space at the disteval dir, the HF cache, and each model's offload folder."""
    places: list[tuple[str, Path, int | None]] = [
        ("disteval dir", base_dir, None),
        ("HF cache", hf_hub_cache(environ), None),
    ]
    for job in jobs:
        offload = job.model.model_args.get("offload_folder")
        if isinstance(offload, str):
            places.append((f"offload {job.name}", Path(offload), _weights_size(job)))
    checks = []
    for what, path, needed in places:
        try:
            free = free_bytes(path)
        except OSError as exc:
            checks.append(Check(f"disk {what}", WARN, f"{path}: {exc}"))
            continue
        text = f"{format_size(free)} free at {path}"
        if needed is not None and free < needed:
            checks.append(Check(f"disk {what}", FAIL,
                                f"{text}; the model's weights are {format_size(needed)}",
                                "free space there or point offload_folder at a larger disk"))
        elif free < DISK_WARN_BYTES:
            checks.append(Check(f"disk {what}", WARN,
                                f"{text} (below {format_size(DISK_WARN_BYTES)})",
                                "free space, or move it (--disteval-dir, HF_HOME)"))
        else:
            checks.append(Check(f"disk {what}", PASS, text))
    return checks


def offline(environ: Mapping[str, str]) -> Check:
    shell = ", ".join(f"{k}={environ[k]}" for k in OFFLINE_ENV
                      if k.endswith("OFFLINE") and k in environ) or "none set"
    text = ("workers run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
            f"TRANSFORMERS_OFFLINE=1 whatever the shell says (here: {shell})")
    off = environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    if environ.get("HF_HUB_OFFLINE") is not None and not off:
        return Check("offline", WARN, text + "; models and datasets are not downloaded",
                     "download them beforehand (hf download ...)")
    return Check("offline", PASS, text)


def models(jobs: Iterable[EvalJob], environ: Mapping[str, str]) -> list[Check]:
    """Each model's weights: a local path or an HF cache snapshot (once per weights)."""
    checks = []
    done: set[tuple[str, str, str]] = set()
    for job in jobs:
        model = job.model
        workdir = job.suite.workdir
        if (model.backend, model.weights, str(workdir)) in done:
            continue
        done.add((model.backend, model.weights, str(workdir)))
        name = f"model {job.suite.path}::{job.name}"
        found = find_weights(model, workdir, environ)
        if found is not None:
            kind = "HF cache snapshot" if "snapshots" in found.parts else "local path"
            checks.append(Check(name, PASS, f"{model.weights}: {kind} {found}"))
            continue
        missing_backend = not BACKENDS[model.backend].available()
        looked, fix = weights_missing(model, workdir, environ)
        checks.append(Check(
            name, WARN if missing_backend else FAIL,
            f"{model.weights!r} is neither a local path nor in the HF cache "
            f"({'; '.join(looked)}); the workers run offline"
            + ("; its backend is missing, so its items skip anyway" if missing_backend
               else ""),
            " or ".join(fix)))
    return checks


def find_weights(model: ModelSpec, workdir: Path, environ: Mapping[str, str]) -> Path | None:
    """Where a worker finds the model's weights: a path (relative ones from the workdir it
    runs in) or, for a hub id, its HF cache snapshot; None: not on this machine."""
    path = Path(model.weights).expanduser()
    if (workdir / path).exists():  # an absolute path stays itself
        return workdir / path
    if not BACKENDS[model.backend].hub_weights:
        return None
    revision = model.model_args.get("revision")
    return local_model_dir(model.weights, str(revision) if revision else None,
                           hf_hub_cache(environ))


def weights_missing(model: ModelSpec, workdir: Path,
                    environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """For weights ``find_weights`` did not find: where they were looked for, and the fixes."""
    weights, key = model.weights, f"model_args.{MODEL_KEY[model.backend]}"
    path = workdir / Path(weights).expanduser()
    looked = [f"no directory {path}"]
    fixes = [f"point {key} at the model's directory (a relative path is relative to the "
             "suite file)"]
    if BACKENDS[model.backend].hub_weights and hub_id_like(weights):
        revision = model.model_args.get("revision")
        repo = hf_hub_cache(environ) / f"models--{weights.replace('/', '--')}"
        looked.append(f"as a hub id, no {'revision ' + str(revision) + ' in ' if revision else ''}"
                      f"{repo}")
        fixes.insert(0, f"where there is network: hf download {weights}"
                        + (f" --revision {revision}" if revision else "")
                        + " (with the same HF_HOME or HF_HUB_CACHE as pytest: the "
                        "workers read that cache)")
    return looked, fixes


def datasets(jobs: Iterable[EvalJob], environ: Mapping[str, str]) -> list[Check]:
    """Each task's data: local files that exist, or a hub dataset in the HF caches."""
    checks = []
    builtin: TaskIndex | None = None
    done: set[tuple[str, str]] = set()
    for job in jobs:
        for entry in job.entries:
            key = (str(job.suite.workdir), entry.task)
            if key in done:
                continue
            done.add(key)
            name = f"dataset {entry.task}"
            local = entry.local
            if local is None:
                unknown = unknown_task(entry.task, job.suite.include_paths, entry.loc)
                if unknown is not None:
                    checks.append(Check(name, FAIL, *unknown))
                    continue
                builtin = builtin or _builtin_index()
                local = builtin.get(entry.task) if builtin is not None else None
                if local is None:
                    checks.append(Check(name, WARN, "a tag or group of lm-eval's, or a task "
                                        "whose YAML is not read here: its datasets are not "
                                        "checked"))
                    continue
            missing = missing_data_files(entry, job.suite.workdir) if entry.local else []
            if missing:
                checks.append(Check(name, FAIL, f"{local.path} reads {', '.join(missing)}, "
                                    f"not found under {job.suite.workdir}",
                                    "fix data_files, or the suite's workdir"))
                continue
            checks.append(dataset_check(name, local.dataset_path(), local.data_files(),
                                        job.suite.workdir, environ))
    return checks


def dataset_check(name: str, dataset_path: str | None, data_files: list[str], workdir: Path,
                  environ: Mapping[str, str]) -> Check:
    """One task's dataset: builder data files, a directory under workdir, or the caches."""
    if dataset_path is None or dataset_path in _BUILDERS:
        what = ", ".join(data_files) if data_files else "no data files"
        return Check(name, PASS, f"local data files: {what}")
    if (workdir / dataset_path).exists():
        return Check(name, PASS, f"local dataset {workdir / dataset_path}")
    hub = hf_hub_cache(environ) / f"datasets--{dataset_path.replace('/', '--')}"
    built = hf_datasets_cache(environ) / dataset_path.replace("/", "___")
    found = [p for p in (hub, built) if p.exists()]
    if found:
        return Check(name, PASS, f"{dataset_path}: in the cache ({found[0]})")
    # a WARN, not a FAIL: datasets' cache layouts differ between versions
    return Check(name, WARN, f"{dataset_path}: not in the HF hub cache ({hub.parent}) nor the "
                 f"datasets cache ({built.parent}); the workers run offline",
                 f"where there is network: hf download --repo-type dataset "
                 f"{dataset_path} (or run the task once online with the same HF_HOME)")


def hf_hub_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_HUB_CACHE") or environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "hub")


def hf_datasets_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_DATASETS_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "datasets")


def _builtin_index() -> TaskIndex | None:
    """lm-eval's own task YAMLs, indexed by regex without importing lm-eval (~3 s)."""
    tasks_dir = lm_eval_tasks_dir()
    return TaskIndex([tasks_dir]) if tasks_dir is not None else None


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's built-in task YAMLs, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def unknown_task(task: str, include_paths: Iterable[Path],
                 at: object = None) -> tuple[str, str] | None:
    """Why lm-eval will not know ``task`` (what is wrong, the fix); None when it may.

    None too when lm-eval is not installed here: then nothing is known (software.py says so).
    """
    builtin = builtin_task_names()
    if builtin is None:
        return None
    include = tuple(include_paths)
    local = task_names(include)
    if task in local or task in builtin:
        return None
    # a local near miss first: arith_mcq beside arith_mc is a typo of the suite's own task
    hint = (difflib.get_close_matches(task, sorted(local), n=1)
            or difflib.get_close_matches(task, sorted(builtin), n=3))
    where = ", ".join(str(p) for p in include) or "none"
    version = package_version("lm_eval")
    return (f"task {task!r}{f' ({at})' if at else ''} is neither a local task (the suite's "
            f"include: {where}) nor one of the {len(builtin)} built-in tasks, groups and "
            f"tags of lm-eval{' ' + version if version else ''}"
            + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""),
            "correct the name (lm-eval ls tasks lists the built-in ones), or add the "
            "directory of its YAML to the suite's include")


_BUILTIN_LOCK = threading.Lock()  # jobs prefetched side by side index lm-eval's tasks once


def builtin_task_names() -> frozenset[str] | None:
    """Every name lm-eval's TaskManager registers (tasks, groups, tags), once per session."""
    tasks_dir = lm_eval_tasks_dir()
    if tasks_dir is None:
        return None
    with _BUILTIN_LOCK:
        return task_names((tasks_dir,))


# a top-level key of a task YAML, quoted or not ("task": x is common in generated ones)
_KEY_RE = re.compile(r"""^(["']?)(task|group|tag|include)\1[ \t]*:[ \t]*([^\n]*)""", re.M)
_ITEM_RE = re.compile(r"\n[ \t]*-[ \t]*([^\n]*)")  # one "- name" line of a block list
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's TaskIndex skips them


@lru_cache(maxsize=64)
def task_names(roots: tuple[Path, ...]) -> frozenset[str]:
    """Task, group and tag names of the task YAMLs under ``roots``, without parsing them.

    As lm-eval's TaskIndex registers them: tags come from the file or from the files it
    includes (``_default_template_yaml``), keys may be quoted. A superset is harmless (the
    worker checks again); a name missed would fail a job lm-eval would have run, so
    tests/test_precheck.py compares this with lm-eval's own index.
    """
    keys: dict[str, dict[str, list[str]]] = {}
    named: dict[str, set[str]] = {}  # a template included by a thousand files is read once
    names: set[str] = set()
    for root in roots:
        # strings, not Paths: 14k files, and pathlib costs more than reading them
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
            for file in files:
                if file.endswith((".yaml", ".yml")):
                    names.update(_yaml_names(os.path.join(folder, file), keys, named, ()))
    return frozenset(names)


def _yaml_names(path: str, keys: dict[str, dict[str, list[str]]],
                named: dict[str, set[str]], stack: tuple[str, ...]) -> set[str]:
    if path in named:
        return named[path]
    found = _top_keys(path, keys)
    names = {*found.get("task", ()), *found.get("group", ()), *found.get("tag", ())}
    for include in found.get("include", ()):
        included = os.path.normpath(os.path.join(os.path.dirname(path), include))
        if included not in stack:  # an include cycle is lm-eval's error, not a hang here
            names.update(_yaml_names(included, keys, named, (*stack, path)))
    named[path] = names
    return names


def _top_keys(path: str, cache: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """The values of ``task``, ``group``, ``tag`` and ``include`` in one file (read once)."""
    if path in cache:
        return cache[path]
    found: dict[str, list[str]] = {}
    cache[path] = found
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return found
    for match in _KEY_RE.finditer(text):
        key, rest = match.group(2), match.group(3).strip()
        values: list[str] = []
        if rest and not rest.startswith(("[", "#")):
            value = _scalar(rest)
            values = [value] if value else []
        elif key in {"tag", "include"}:  # a list; under task: it is a group's members
            if rest.startswith("["):
                values = [v for v in map(_scalar, rest[1:].split("]", 1)[0].split(",")) if v]
            else:
                pos = match.end()
                while (item := _ITEM_RE.match(text, pos)) is not None:
                    value = _scalar(item.group(1))
                    if value:
                        values.append(value)
                    pos = item.end()
        # a key written twice: either may be the one lm-eval reads, keep both
        found.setdefault(key, []).extend(values)
    return found


def _scalar(text: str) -> str | None:
    """A YAML scalar as written on one line: quoted, or plain up to a comment."""
    text = text.strip()
    if text[:1] in {'"', "'"}:
        end = text.find(text[0], 1)
        return (text[1:end] or None) if end > 0 else None
    return re.split(r"[ \t]#", text, maxsplit=1)[0].strip() or None


def _weights_size(job: EvalJob) -> int | None:
    path = local_model_dir(job.model.weights)
    if path is None or not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file()) or None
