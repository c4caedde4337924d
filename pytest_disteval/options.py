"""Every option of the plugin, defined once: flag, ini key, environment variable, parser, help.

plugin.py registers them all in the one ``disteval`` group; settings.py reads each
once with ``read`` (command line > ini > environment > default). A parser takes the
value and where it came from ("--tp", "ini option 'disteval_tp'", "environment
variable DISTEVAL_TP") and raises pytest.UsageError naming that place and what is valid.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.executors.local import START_METHODS
from pytest_disteval.suite import overrides
from pytest_disteval.units import parse_duration

EXECUTORS = ("local", "ray")
# the words that turn a report off, as --junitxml users would guess them
_OFF = {"off", "none", "no", "false", "0"}


# ------------------------------------------------------------------ parsers


def parse_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise pytest.UsageError(f"{where}: {value!r} is not a boolean (true/false)")


def _dir(value: object, where: str) -> Path | None:
    text = str(value).strip()
    return Path(text) if text else None  # anchored at the rootdir by settings.py


def _user_path(value: object, where: str) -> Path | None:
    text = str(value).strip()
    return Path(text).expanduser() if text else None  # anchored by settings.py


def _report_path(value: object, where: str) -> Path | None:
    """A report's path, or None for off; settings.py anchors it (as --junitxml's)."""
    text = str(value).strip()
    return None if text.lower() in _OFF else Path(text).expanduser()


def _timeout(value: object, where: str) -> float | None:
    text = str(value).strip().lower()
    if text in {"0", "none", "off"}:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}; or 'off' for no limit") from None


def _choice(choices: tuple[str, ...], valid: str) -> Callable[[object, str], str]:
    def parse(value: object, where: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise pytest.UsageError(f"{where}: {value!r} is not valid: {valid}")
        return text

    return parse


def _executor(value: object, where: str) -> str:
    executor = _choice(EXECUTORS, f"one of {', '.join(EXECUTORS)}")(value, where)
    if executor == "ray":
        # imported here: ray.py is light, but plans without Ray never need it
        from pytest_disteval.executors.ray import INSTALL_HINT, ray_available

        if not ray_available():
            raise pytest.UsageError(f"{where}: the ray executor needs Ray, which is not "
                                    f"installed; install it with: {INSTALL_HINT}")
    return executor


def _ray_address(value: object, where: str) -> str | None:
    text = str(value).strip()
    if text and not re.fullmatch(r"auto|ray://\S+|[\w.\-\[\]:]+:\d+", text):
        raise pytest.UsageError(f"{where}: {text!r} is not valid: auto, host:port "
                                "(the head's GCS port, 6379 by default) or ray://host:port")
    return text or None


def _alpha(value: object, where: str) -> float:
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if not 0.0 < number < 1.0:
        raise pytest.UsageError(f"{where}: {value!r} is not valid: a significance level "
                                "between 0 and 1, e.g. 0.05")
    return number


def _count(*, allow_zero: bool = False,
           words: tuple[str, ...] = ()) -> Callable[[object, str], int | str]:
    def parse(value: object, where: str) -> int | str:
        text = str(value).strip().lower()
        if text in words:
            return text
        if text.isdigit() and (int(text) > 0 or (allow_zero and int(text) == 0)):
            return int(text)
        valid = "a whole number >= 0" if allow_zero else "a whole number >= 1"
        valid += "".join(f" or {w!r}" for w in words)
        raise pytest.UsageError(f"{where}: {value!r} is not valid: {valid}")

    return parse


def _gpu_ids(value: object, where: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise pytest.UsageError(f"{where}: {value!r} is not valid: comma-separated GPU "
                                "indices such as 0,1,2,3")
    return tuple(int(p) for p in parts)


def _fake_gpus(value: object, where: str) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    # imported here: the inventory module is needed only when a fake one is asked for
    from pytest_disteval.gpu.inventory import FakeInventory

    try:
        FakeInventory.from_spec(text)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None
    return text


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Option:
    flag: str  # "--disteval-timeout"
    dest: str  # the argparse dest; settings.py reads it by ``name``
    help: str  # pytest style: capitalised, no final period; ``full_help`` adds the rest
    parse: Callable[[object, str], Any]  # (value, where) -> the value Settings holds
    metavar: str | None = None  # None: a flag that takes no value
    ini: str | None = None  # None: command line only
    env: str | None = None
    default: str | None = None  # the value when none is given, parsed as if written
    shown: str | None = None  # the default as --help says it, where no value stands for it
    off_flag: str | None = None  # the flag that sets a boolean to false
    off_help: str = ""

    @property
    def name(self) -> str:
        return self.dest.removeprefix("disteval_")

    @property
    def boolean(self) -> bool:
        return self.parse is parse_bool

    @property
    def full_help(self) -> str:
        """The help with the default and the environment variable, as --help shows it."""
        notes = []
        shown = self.shown or (self.default if self.default != "false" else None)
        if shown:  # a flag that is off unless given says nothing
            notes.append(f"default: {shown}")
        if self.env:
            notes.append(f"env: {self.env}")
        return f"{self.help} ({'; '.join(notes)})" if notes else self.help


OPTIONS: tuple[Option, ...] = (
    Option("--disteval-dir", "disteval_dir",
           "Directory for the result store, results, logs and worker runs; a relative "
           "one is relative to the rootdir", _dir, metavar="DIR", ini="disteval_dir",
           env="DISTEVAL_DIR", shown="<rootdir>/.disteval"),
    Option("--disteval-cache", "disteval_cache", "Reuse stored results whose key matches",
           parse_bool, ini="disteval_cache", env="DISTEVAL_CACHE", default="true",
           off_flag="--disteval-no-cache",
           off_help="Evaluate everything again; neither read nor write the result store"),
    Option("--disteval-clear-cache", "disteval_clear_cache",
           "Delete the result store before the run", parse_bool, default="false"),
    Option("--disteval-timeout", "disteval_timeout",
           "Wall-time limit of one job's worker, e.g. 90s, 30m, 2h, or off", _timeout,
           metavar="DURATION", ini="disteval_timeout", env="DISTEVAL_TIMEOUT", default="2h"),
    Option("--gpus", "disteval_gpus", "GPUs to use: a count, 'all', or 0 for CPU",
           _count(allow_zero=True, words=("all",)), metavar="N", ini="disteval_gpus",
           env="DISTEVAL_GPUS", shown="all visible GPUs, or CPU where there are none"),
    Option("--gpu-ids", "disteval_gpu_ids", "Explicit GPU indices to use, e.g. 0,1,2,3",
           _gpu_ids, metavar="IDS", ini="disteval_gpu_ids", env="DISTEVAL_GPU_IDS"),
    Option("--tp", "disteval_tp", "Tensor parallel size of each group, or auto, for every model",
           _count(words=("auto",)), metavar="N", ini="disteval_tp", env="DISTEVAL_TP",
           shown="each model's tp, else automatic"),
    Option("--pp", "disteval_pp", "Pipeline parallel size of each group, for every model",
           _count(), metavar="N", ini="disteval_pp", env="DISTEVAL_PP",
           shown="each model's pp, else 1"),
    Option("--dp", "disteval_dp", "Replicas sharing each job's requests", _count(),
           metavar="N", ini="disteval_dp", env="DISTEVAL_DP",
           shown="as many groups as the GPUs allow; 1 on CPU"),
    Option("--disteval-pack", "disteval_pack",
           "Replicas per group, for models too small to keep a GPU busy", _count(),
           metavar="N", ini="disteval_pack", env="DISTEVAL_PACK", shown="1"),
    Option("--disteval-plan", "disteval_plan",
           "Print jobs, layouts, GPU groups and worker commands; run nothing", parse_bool,
           default="false"),
    Option("--disteval-fake-gpus", "disteval_fake_gpus",
           "Plan for a GPU inventory this host lacks, e.g. 8x80GiB or 8x80GiB:H100/4 "
           "(NVLink domains of 4)", _fake_gpus, metavar="SPEC"),
    Option("--disteval-doctor", "disteval_doctor",
           "Print the preflight checks (GPUs, driver, NCCL, backends, interconnect, disk, "
           "offline models and datasets) and exit; run nothing", parse_bool, default="false"),
    Option("--disteval-limit", "disteval_limit",
           "Quick look: at most N documents per task entry; results are marked partial and "
           "thresholds get a 2 x stderr tolerance", overrides.parse_limit, metavar="N",
           ini="disteval_limit", env="DISTEVAL_LIMIT", shown="no cap"),
    Option("--disteval-limit-seed", "disteval_limit_seed",
           "With --disteval-limit N: N documents per task drawn at random with this seed "
           "(the same ones every run), not the first N", overrides.parse_seed, metavar="SEED",
           ini="disteval_limit_seed", env="DISTEVAL_LIMIT_SEED", shown="the first N"),
    Option("--disteval-dtype", "disteval_dtype",
           "The dtype of every model: auto, float32, float16 or bfloat16",
           overrides.parse_dtype, metavar="DTYPE", ini="disteval_dtype", env="DISTEVAL_DTYPE",
           shown="each suite's"),
    Option("--disteval-batch-size", "disteval_batch_size",
           "Batch size for every model: N, auto or auto:N", overrides.parse_batch_size,
           metavar="N", ini="disteval_batch_size", env="DISTEVAL_BATCH_SIZE",
           shown="each suite's"),
    Option("--disteval-model-args", "disteval_model_args",
           "Backend options merged into every model's model_args, e.g. "
           "gpu_memory_utilization=0.8", overrides.parse_model_args, metavar="K=V,...",
           ini="disteval_model_args", env="DISTEVAL_MODEL_ARGS", shown="none"),
    Option("--disteval-apply-chat-template", "disteval_apply_chat_template",
           "Render every task entry's prompts with its model's chat template: true, false "
           "or a template name (lm-eval's --apply_chat_template)", overrides.parse_chat_template,
           metavar="WHICH", ini="disteval_apply_chat_template",
           env="DISTEVAL_APPLY_CHAT_TEMPLATE", shown="each suite's"),
    Option("--disteval-system-instruction", "disteval_system_instruction",
           "The system instruction of every task entry (lm-eval's --system_instruction)",
           overrides.parse_system_instruction, metavar="TEXT",
           ini="disteval_system_instruction", env="DISTEVAL_SYSTEM_INSTRUCTION",
           shown="each suite's"),
    Option("--disteval-executor", "disteval_executor",
           "Where workers run: local (subprocesses on this host) or ray (actors on a Ray "
           "cluster, GPUs from Ray)", _executor, metavar="NAME", ini="disteval_executor",
           env="DISTEVAL_EXECUTOR", default="local"),
    Option("--disteval-worker-start", "disteval_worker_start",
           "How local workers start: forkserver (hf and scoring workers forked from one "
           "process that imported torch, transformers and lm-eval once), subprocess (each "
           "imports everything itself), or auto (as forkserver)",
           _choice(START_METHODS, f"one of {', '.join(START_METHODS)}"), metavar="HOW",
           ini="disteval_worker_start", env="DISTEVAL_WORKER_START", default="auto"),
    Option("--ray-address", "ray_address",
           "Ray cluster for --disteval-executor ray: auto, ray://host:port or host:port",
           _ray_address, metavar="ADDRESS", ini="disteval_ray_address", env="RAY_ADDRESS",
           shown="a local Ray instance"),
    Option("--disteval-baseline", "disteval_baseline",
           "Compare with the baseline file PATH: a regression item per threshold metric "
           "(and per metric under a task entry's 'regression' key)", _user_path,
           metavar="PATH", ini="disteval_baseline", env="DISTEVAL_BASELINE"),
    Option("--disteval-save-baseline", "disteval_save_baseline",
           "Write this run's scores, stderrs, n and per-document results to the baseline "
           "file PATH", _user_path, metavar="PATH", ini="disteval_save_baseline",
           env="DISTEVAL_SAVE_BASELINE"),
    Option("--disteval-alpha", "disteval_alpha", "Significance level of the regression tests",
           _alpha, metavar="P", ini="disteval_alpha", env="DISTEVAL_ALPHA", default="0.05"),
    Option("--disteval-json", "disteval_json", "Write the JSON report of the run to PATH, or off",
           _report_path, metavar="PATH", ini="disteval_json", env="DISTEVAL_JSON",
           shown="<disteval dir>/report.json"),
    Option("--disteval-md", "disteval_md",
           "Write a markdown summary to PATH (it is also appended to $GITHUB_STEP_SUMMARY "
           "when that is set)", _report_path, metavar="PATH", ini="disteval_md",
           env="DISTEVAL_MD"),
    Option("--disteval-html", "disteval_html", "Write a self-contained HTML report to PATH",
           _report_path, metavar="PATH", ini="disteval_html", env="DISTEVAL_HTML"),
    Option("--disteval-samples", "disteval_samples",
           "Export every document's prompt, responses, filtered answer and metric values as "
           "JSONL beside each results file (secrets redacted); results stored without one "
           "are evaluated again", parse_bool, ini="disteval_samples", env="DISTEVAL_SAMPLES",
           default="false", off_flag="--disteval-no-samples",
           off_help="No per-sample export, whatever the ini file or the environment says"),
    Option("--disteval-predict-only", "disteval_predict_only",
           "Run the models and store their responses without scoring them (lm-eval's "
           "predict_only); items are skipped as predicted only", parse_bool, default="false"),
    Option("--disteval-rescore", "disteval_rescore",
           "Score the responses stored by an earlier run (--disteval-predict-only, or any "
           "dp run) again, without loading a model", parse_bool, default="false"),
    Option("--disteval-progress", "disteval_progress",
           "Live progress of running jobs: auto (on a terminal only), on or off",
           _choice(("auto", "on", "off"), "auto, on or off"), metavar="WHEN",
           ini="disteval_progress", env="DISTEVAL_PROGRESS", default="auto"),
)


def read(config: pytest.Config, option: Option) -> tuple[Any, str]:
    """The option's parsed value and where it came from: command line > ini > env > default.

    Where no value is given and the option has no ``default``: (None, "default").
    """
    value = config.getoption(option.dest)
    if value is not None:
        flag = option.off_flag if value is False and option.off_flag else option.flag
        return option.parse(value, flag), flag
    if option.ini is not None:
        where = f"ini option {option.ini!r}"
        try:
            ini_value = config.getini(option.ini)
        except pytest.UsageError as exc:
            # pytest's own message for a bad boolean names no key
            raise pytest.UsageError(f"{where}: {exc}; valid: true or false") from None
        if ini_value not in (None, "", []):
            return option.parse(ini_value, where), where
    if option.env is not None and os.environ.get(option.env):
        where = f"environment variable {option.env}"
        return option.parse(os.environ[option.env], where), where
    if option.default is None:
        return None, "default"
    return option.parse(option.default, "default"), "default"
