"""Settings resolved once per session from the options table (options.py).

Each option is read once, command line > ini > environment > default; its parser says
where a bad value came from. Here: the defaults that depend on the rootdir, paths
anchored where the user meant them, and the checks that involve two options.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.options import OPTIONS, read
from pytest_disteval.plan.planner import GpuOptions
from pytest_disteval.suite import overrides as overrides_mod


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
    export_samples: bool = False  # --disteval-samples: the readable per-sample JSONL
    predict_only: bool = False  # store the models' responses, score nothing
    rescore: bool = False  # score the stored responses again, load no model

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


def resolve(config: pytest.Config) -> Settings:
    read_once = {option.name: read(config, option) for option in OPTIONS}
    value = {name: got for name, (got, _) in read_once.items()}
    where = {name: place for name, (_, place) in read_once.items()}
    base_dir = value["dir"] or Path(".disteval")
    base_dir = base_dir if base_dir.is_absolute() else config.rootpath / base_dir
    if value["limit"] and value["save_baseline"]:
        # a quick look's scores cover a few documents per task: as a baseline they
        # would make every later full run look like a change
        raise pytest.UsageError(
            f"--disteval-save-baseline cannot be combined with --disteval-limit "
            f"{value['limit']}: a baseline records full runs; drop the limit to save one")
    if value["limit_seed"] is not None and not value["limit"]:
        raise pytest.UsageError(
            f"{where['limit_seed']} {value['limit_seed']} draws --disteval-limit N documents "
            "at random: give --disteval-limit N with it")
    if value["predict_only"] and value["rescore"]:
        raise pytest.UsageError("--disteval-predict-only and --disteval-rescore exclude each "
                                "other: predict in one run, rescore in the next")
    for flag in ("predict_only", "rescore"):
        if value[flag] and not value["cache"]:
            # the responses live in the store: a run without one keeps nothing to rescore
            raise pytest.UsageError(f"--disteval-{flag.replace('_', '-')} needs the result "
                                    f"store: drop {where['cache']}")
    if value["executor"] == "ray" and value["fake_gpus"]:
        raise pytest.UsageError("--disteval-fake-gpus cannot be combined with "
                                f"{where['executor']} 'ray': the GPUs are the Ray cluster's "
                                "(declare logical ones with: ray start --head --num-gpus N)")
    xdist_worker = hasattr(config, "workerinput")
    # absent values (None) leave the dataclasses' own defaults
    gpu = {name: value[name] for name in ("gpus", "tp", "pp", "dp", "pack", "gpu_ids",
                                          "fake_gpus") if value[name] is not None}
    given = {name: value[name] for name in ("limit", "limit_seed", "dtype", "batch_size",
                                            "model_args", "apply_chat_template",
                                            "system_instruction")
             if value[name] is not None}
    # relative to where pytest was started, as a shell user means it
    baselines = {name: _anchor(value[name], config.invocation_params.dir)
                 for name in ("baseline", "save_baseline") if value[name] is not None}
    return Settings(
        base_dir=base_dir,
        use_cache=value["cache"],
        clear_cache=value["clear_cache"],
        timeout=value["timeout"],
        python=sys.executable,
        gpu=GpuOptions(**gpu, xdist_worker=xdist_worker),
        plan_only=value["plan"],
        is_xdist_worker=xdist_worker,
        overrides=overrides_mod.Overrides(**given),
        doctor=value["doctor"],
        executor=value["executor"],
        worker_start=value["worker_start"],
        ray_address=value["ray_address"],
        alpha=value["alpha"],
        reports=_report_options(config, base_dir, value, where),
        export_samples=value["samples"],
        predict_only=value["predict_only"],
        rescore=value["rescore"],
        **baselines,
    )


def _anchor(path: Path, start: Path) -> Path:
    return path if path.is_absolute() else start / path


def _report_options(config: pytest.Config, base_dir: Path, value: dict[str, Any],
                    where: dict[str, str]) -> ReportOptions:
    paths: dict[str, Path | None] = {}
    for name in ("json", "md", "html"):
        if where[name] == "default":
            # a run leaves its JSON report where its results are; the others are asked for
            paths[name] = base_dir / "report.json" if name == "json" else None
        elif value[name] is None:
            paths[name] = None  # off
        else:
            # like --junitxml: relative to where pytest was started; an ini value to rootdir
            start = (config.rootpath if where[name].startswith("ini")
                     else config.invocation_params.dir)
            paths[name] = _anchor(value[name], start)
    return ReportOptions(json_path=paths["json"], md_path=paths["md"],
                         html_path=paths["html"], progress=value["progress"],
                         json_asked=where["json"] != "default" and paths["json"] is not None)
