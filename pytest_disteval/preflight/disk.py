"""Disk checks: free space, the offline mode, and the models and datasets the workers read.

The workers run offline (HF_HUB_OFFLINE=1), so every model and hub dataset must
already be on disk: a local path or the HF caches. The fixes name the ``hf``
command (huggingface_hub's CLI; the venvs have no ``huggingface-cli``)
that downloads what is missing. The lookups here (``find_weights``,
``unknown_task``) are the scheduler's too: a job whose model or task is missing
fails before its worker starts (jobs/precheck.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pytest_disteval.backends import BACKENDS
from pytest_disteval.jobs.job import EvalJob, missing_data_files
from pytest_disteval.jobs.launch import OFFLINE_ENV
from pytest_disteval.plan.sizing import local_model_dir
from pytest_disteval.plan.weights import find_weights, hf_hub_cache, weights_missing
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check
from pytest_disteval.suite.builtin_tasks import (
    _builtin_index,
    unknown_task,
)
from pytest_disteval.suite.localtasks import TaskIndex
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




def hf_datasets_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_DATASETS_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "datasets")






















def _weights_size(job: EvalJob) -> int | None:
    path = local_model_dir(job.model.weights)
    if path is None or not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file()) or None
