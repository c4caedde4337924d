"""Settings resolved once per session: command line > ini > environment > default.

Every validator says where a bad value came from, and raises pytest.UsageError.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.executors.local import START_METHODS
from pytest_disteval.plan.planner import GpuOptions
from pytest_disteval.suite import overrides as overrides_mod
from pytest_disteval.units import parse_duration

DEFAULT_TIMEOUT = "2h"


@dataclass(frozen=True)
class ReportOptions:
    json_path: Path | None = None  # None: no JSON report (--disteval-json off)
    md_path: Path | None = None
    html_path: Path | None = None
    progress: str = "auto"  # auto | on | off
    json_asked: bool = False  # a path was given: write it even when no suite item ran


@dataclass(frozen=True)
class Settings:
    base_dir: Path  # holds store/, results/, logs/, runs/
    use_cache: bool
    clear_cache: bool
    timeout: float | None  # seconds per job; None: no limit
    python: str  # interpreter that runs the workers
    gpu: GpuOptions = GpuOptions()
    plan_only: bool = False  # --disteval-plan: print the plan, run nothing
    is_xdist_worker: bool = False
    # run-wide --disteval-limit/-dtype/-batch-size/-model-args (overrides.py)
    overrides: overrides_mod.Overrides = overrides_mod.Overrides()
    doctor: bool = False  # --disteval-doctor: print the preflight checks, run nothing
    executor: str = "local"  # "local" (processes here) or "ray" (actors on a cluster)
    worker_start: str = "auto"  # local workers: "auto", "forkserver" or "subprocess"
    ray_address: str | None = None  # None: a local Ray instance
    # baselines (baseline.py): compare with one, save one, the tests' significance level
    baseline: Path | None = None
    save_baseline: Path | None = None
    alpha: float = 0.05
    reports: ReportOptions = ReportOptions()

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "store"

    @property
    def results_dir(self) -> Path:
        return self.base_dir / "results"

    @property
    def logs_dir(self) -> Path:
        return self.base_dir / "logs"

    @property
    def runs_dir(self) -> Path:
        return self.base_dir / "runs"


# options whose flags are not --disteval-*: the layout words users already know
_SHORT_FLAGS = {"disteval_gpus": "--gpus", "disteval_gpu_ids": "--gpu-ids",
                "disteval_tp": "--tp", "disteval_pp": "--pp", "disteval_dp": "--dp",
                "disteval_pack": "--disteval-pack"}


def _pick(config: pytest.Config, option: str, ini: str, env: str) -> tuple[object, str]:
    value = config.getoption(option)
    if value is not None:
        flag = _SHORT_FLAGS.get(option, f"--{option.replace('_', '-')}")
        return value, flag
    ini_value = config.getini(ini)
    if ini_value not in (None, "", []):
        return ini_value, f"ini option {ini!r}"
    if os.environ.get(env):
        return os.environ[env], f"environment variable {env}"
    return None, "default"


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise pytest.UsageError(f"{where}: {value!r} is not a boolean (true/false)")


def resolve(config: pytest.Config) -> Settings:
    base, _ = _pick(config, "disteval_dir", "disteval_dir", "DISTEVAL_DIR")
    base_dir = Path(str(base)) if base else config.rootpath / ".disteval"
    if not base_dir.is_absolute():
        base_dir = config.rootpath / base_dir
    cache, where = _pick(config, "disteval_cache", "disteval_cache", "DISTEVAL_CACHE")
    use_cache = True if cache is None else _bool(cache, where)
    timeout_value, where = _pick(config, "disteval_timeout", "disteval_timeout",
                                 "DISTEVAL_TIMEOUT")
    timeout: float | None
    if timeout_value is None:
        timeout = parse_duration(DEFAULT_TIMEOUT)
    elif str(timeout_value).strip().lower() in {"0", "none", "off"}:
        timeout = None
    else:
        try:
            timeout = parse_duration(str(timeout_value))
        except ValueError as exc:
            raise pytest.UsageError(f"{where}: {exc}; or 'off' for no limit") from None
    overrides = _overrides(config)
    baselines = _baseline_options(config)
    if overrides.limit and baselines.get("save_baseline"):
        # a quick look's scores cover a few documents per task: as a baseline they
        # would make every later full run look like a change
        raise pytest.UsageError(
            f"--disteval-save-baseline cannot be combined with --disteval-limit "
            f"{overrides.limit}: a baseline records full runs; drop the limit to save one")
    return Settings(
        base_dir=base_dir,
        use_cache=use_cache,
        clear_cache=bool(config.getoption("disteval_clear_cache")),
        timeout=timeout,
        python=sys.executable,
        gpu=_gpu_options(config),
        plan_only=bool(config.getoption("disteval_plan")),
        is_xdist_worker=hasattr(config, "workerinput"),
        reports=_report_options(config, base_dir),
        overrides=overrides,
        doctor=bool(config.getoption("disteval_doctor", False)),
        **_executor_options(config),
        **baselines,
    )


def _overrides(config: pytest.Config) -> overrides_mod.Overrides:
    values: dict[str, object] = {}
    for name, parse in (("limit", overrides_mod.parse_limit),
                        ("dtype", overrides_mod.parse_dtype),
                        ("batch_size", overrides_mod.parse_batch_size),
                        ("model_args", overrides_mod.parse_model_args)):
        value, where = _pick(config, f"disteval_{name}", f"disteval_{name}",
                             f"DISTEVAL_{name.upper()}")
        if value is not None:
            values[name] = parse(value, where)
    return overrides_mod.Overrides(**values)  # type: ignore[arg-type]
EXECUTORS = ("local", "ray")


def _executor_options(config: pytest.Config) -> dict[str, Any]:
    value, where = _pick(config, "disteval_executor", "disteval_executor", "DISTEVAL_EXECUTOR")
    executor = "local" if value is None else str(value).strip().lower()
    if executor not in EXECUTORS:
        raise pytest.UsageError(f"{where}: {value!r} is not valid: one of "
                                f"{', '.join(EXECUTORS)}")
    address, where_address = _pick(config, "ray_address", "disteval_ray_address", "RAY_ADDRESS")
    if executor == "ray":
        from pytest_disteval.executors.ray import INSTALL_HINT, ray_available

        if not ray_available():
            raise pytest.UsageError(f"{where}: the ray executor needs Ray, which is not "
                                    f"installed; install it with: {INSTALL_HINT}")
        if config.getoption("disteval_fake_gpus"):
            raise pytest.UsageError("--disteval-fake-gpus cannot be combined with "
                                    f"{where} 'ray': the GPUs are the Ray cluster's (declare "
                                    "logical ones with: ray start --head --num-gpus N)")
    text = str(address).strip() if address not in (None, "") else None
    if text is not None and not re.fullmatch(r"auto|ray://\S+|[\w.\-\[\]:]+:\d+", text):
        raise pytest.UsageError(f"{where_address}: {text!r} is not valid: auto, host:port "
                                "(the head's GCS port, 6379 by default) or ray://host:port")
    start, where_start = _pick(config, "disteval_worker_start", "disteval_worker_start",
                               "DISTEVAL_WORKER_START")
    worker_start = "auto" if start is None else str(start).strip().lower()
    if worker_start not in START_METHODS:
        raise pytest.UsageError(f"{where_start}: {start!r} is not valid: one of "
                                f"{', '.join(START_METHODS)}")
    return {"executor": executor, "ray_address": text, "worker_start": worker_start}


def _baseline_options(config: pytest.Config) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in ("baseline", "save_baseline"):
        value, _ = _pick(config, f"disteval_{name}", f"disteval_{name}",
                         f"DISTEVAL_{name.upper()}")
        if value:
            path = Path(str(value)).expanduser()
            # relative to where pytest was started, as a shell user means it
            values[name] = path if path.is_absolute() else Path(config.invocation_params.dir,
                                                                  path)
    alpha, where = _pick(config, "disteval_alpha", "disteval_alpha", "DISTEVAL_ALPHA")
    if alpha is not None:
        try:
            number = float(str(alpha))
        except ValueError:
            number = math.nan
        if not 0.0 < number < 1.0:
            raise pytest.UsageError(f"{where}: {alpha!r} is not valid: a significance level "
                                    "between 0 and 1, e.g. 0.05")
        values["alpha"] = number
    return values


_OFF = {"off", "none", "no", "false", "0"}


def _report_options(config: pytest.Config, base_dir: Path) -> ReportOptions:
    paths: dict[str, Path | None] = {}
    asked = False
    for name in ("json", "md", "html"):
        value, where = _pick(config, f"disteval_{name}", f"disteval_{name}",
                             f"DISTEVAL_{name.upper()}")
        if value is None:
            # a run leaves its JSON report where its results are; the others are asked for
            paths[name] = base_dir / "report.json" if name == "json" else None
        elif str(value).strip().lower() in _OFF:
            paths[name] = None
        else:
            asked = asked or name == "json"
            # like --junitxml: relative to where pytest was started; an ini value to rootdir
            start = (config.rootpath if where.startswith("ini")
                     else config.invocation_params.dir)
            paths[name] = start / Path(str(value)).expanduser()
    progress, where = _pick(config, "disteval_progress", "disteval_progress",
                            "DISTEVAL_PROGRESS")
    mode = "auto" if progress is None else str(progress).strip().lower()
    if mode not in {"auto", "on", "off"}:
        raise pytest.UsageError(f"{where}: {progress!r} is not valid: auto, on or off")
    return ReportOptions(json_path=paths["json"], md_path=paths["md"],
                         html_path=paths["html"], progress=mode, json_asked=asked)


def _positive(value: object, where: str, *, allow_zero: bool = False,
              words: tuple[str, ...] = ()) -> int | str:
    text = str(value).strip().lower()
    if text in words:
        return text
    if text.isdigit() and (int(text) > 0 or (allow_zero and int(text) == 0)):
        return int(text)
    valid = ("a whole number >= 0" if allow_zero else "a whole number >= 1")
    valid += "".join(f" or {w!r}" for w in words)
    raise pytest.UsageError(f"{where}: {value!r} is not valid: {valid}")


def _gpu_options(config: pytest.Config) -> GpuOptions:
    values: dict[str, object] = {}
    for name, allow_zero, words in (("gpus", True, ("all",)), ("tp", False, ("auto",)),
                                    ("pp", False, ()), ("dp", False, ()), ("pack", False, ())):
        value, where = _pick(config, f"disteval_{name}", f"disteval_{name}",
                             f"DISTEVAL_{name.upper()}")
        if value is not None:
            values[name] = _positive(value, where, allow_zero=allow_zero, words=words)
    ids, where = _pick(config, "disteval_gpu_ids", "disteval_gpu_ids", "DISTEVAL_GPU_IDS")
    if ids is not None:
        parts = [p.strip() for p in str(ids).split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise pytest.UsageError(f"{where}: {ids!r} is not valid: comma-separated GPU "
                                    "indices such as 0,1,2,3")
        values["gpu_ids"] = tuple(int(p) for p in parts)
    fake = config.getoption("disteval_fake_gpus")
    if fake:
        from pytest_disteval.gpu.inventory import FakeInventory

        try:
            FakeInventory.from_spec(fake)
        except ValueError as exc:
            raise pytest.UsageError(f"--disteval-fake-gpus: {exc}") from None
        values["fake_gpus"] = fake
    values["xdist_worker"] = hasattr(config, "workerinput")
    return GpuOptions(**values)  # type: ignore[arg-type]
