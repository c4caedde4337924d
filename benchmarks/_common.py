"""What the benchmark scripts share: the machine and software a figure was measured on, the
generated suites of local tasks, and how a run reports a failed check and cleans up."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SRC_TASK = REPO / "suites" / "tasks" / "arith_mc.yaml"
SRC_DATA = REPO / "suites" / "data"
MODEL_DIR = REPO / "demo" / "models" / "tiny-arith"
COLLECTED_RE = re.compile(r"(\d+) tests? collected in ([0-9.]+)s")

# the demo model on CPU, as a generated suite's `models:` block (its entries come after)
DEMO_MODEL_LINES = [
    "models:",
    "  - name: tiny-arith",
    "    backend: hf",
    "    model_args:",
    f"      pretrained: {MODEL_DIR}",
    "      dtype: float32",
    "    device: cpu",
    "    batch_size: 64",
    "    budgets:",
    "      wall_time: 30m",
]


def add_run_options(ap: argparse.ArgumentParser, keep: str) -> None:
    """The options of every timing script that works in a temporary directory; ``keep`` says
    what --keep keeps."""
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the timed processes (default: this one)")
    ap.add_argument("--bytecode-cache", action="store_true",
                    help="let the timed processes cache bytecode under a temporary "
                         "PYTHONPYCACHEPREFIX even if PYTHONDONTWRITEBYTECODE is set "
                         "(nothing is written into the repository)")
    ap.add_argument("--keep", action="store_true", help=f"keep {keep}")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")


class BenchError(Exception):
    """A benchmark's check failed: run_benchmark reports it and exits 1."""


def run_benchmark(measure: Callable[[], int], work: Path, keep: bool) -> int:
    """``measure()``'s exit code, or 1 when it raises BenchError (named on stderr).

    The temporary directory ``work`` is removed once ``measure`` returned, unless ``keep``
    (--keep); when it raised, it is kept and named, so the failed run can be looked at."""
    ok = False
    try:
        code = measure()
        ok = True
        return code
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(kept {work})", file=sys.stderr)


def write_json(path: Path, result: dict[str, Any],
               default: Callable[[Any], Any] | None = None) -> None:
    """The results as --json asks, ``default`` as json.dumps takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=default) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def write_local_tasks(root: Path, names: list[str]) -> None:
    """``root/tasks/<name>.yaml`` for each name, a copy of suites/tasks/arith_mc.yaml with its
    ``task:`` renamed, and ``root/data``, the copy of suites/data their data_files name."""
    text = SRC_TASK.read_text(encoding="utf-8")
    if not re.search(r"^task: arith_mc$", text, re.M):
        raise BenchError(f"{SRC_TASK}: no 'task: arith_mc' line to rename")
    (root / "tasks").mkdir(parents=True)
    for name in names:
        (root / "tasks" / f"{name}.yaml").write_text(
            re.sub(r"^task: arith_mc$", f"task: {name}", text, count=1, flags=re.M),
            encoding="utf-8")
    shutil.copytree(SRC_DATA, root / "data")


def write_generated_suite(root: Path, lines: list[str]) -> Path:
    """``root/suite.yaml``, of ``lines``."""
    suite = root / "suite.yaml"
    suite.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return suite


def bytecode_setting(env: dict[str, str], work: Path, cache: bool) -> str:
    """With ``cache`` (--bytecode-cache), ``env`` lets the timed processes cache bytecode under
    ``work``, outside the repository; the setting in words, for the results."""
    if cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        return "cached under a temporary PYTHONPYCACHEPREFIX"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return "not written (PYTHONDONTWRITEBYTECODE is set)"
    return "as the environment has it"


def children_cpu() -> float:
    """User+sys CPU seconds of the finished child processes so far (all descendants)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_captured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str, int]:
    """``cmd`` run to completion, stdin closed: its wall seconds, user+sys CPU seconds (all
    descendants), stdout and stderr together, and exit code."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, children_cpu() - cpu0, proc.stdout + proc.stderr, proc.returncode


def collected(output: str, where: str) -> tuple[int, float]:
    """The item count and seconds of pytest's last 'N tests collected in Xs' line."""
    found = COLLECTED_RE.findall(output)
    if not found:
        raise BenchError(f"{where}: no 'N tests collected in Xs' line in:\n{output[-3000:]}")
    count, secs = found[-1]
    return int(count), float(secs)


def timed_collection(cmd: list[str], cwd: Path, env: dict[str, str], expected: int,
                     what: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, pytest's own 'collected in' seconds) of one --collect-only
    run, which must exit 0 and collect ``expected`` items."""
    wall, cpu, out, rc = run_captured(cmd, cwd, env)
    if rc != 0:
        raise BenchError(f"{what} exited {rc}:\n{out[-3000:]}")
    count, secs = collected(out, what)
    if count != expected:
        raise BenchError(f"{what} collected {count} items, expected {expected}:\n{out[-3000:]}")
    return wall, cpu, secs


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    try:
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "pytest_disteval"], capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        dirty = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "plugin_uncommitted_changes": dirty.splitlines(),
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_gib": mem,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "lm_eval": version("lm_eval"),
        "datasets": version("datasets"),
        "pytest": version("pytest"),
        "pytest_disteval": version("pytest-disteval"),
        "git_commit": commit or None,
    }


def worker_lines(logs: list[Path]) -> list[str]:
    """The ``[disteval]`` lines of the plugin's worker logs (where each worker's time went),
    each prefixed with its run directory and log name."""
    lines = []
    for log in logs:
        lines += [f"{log.parent.parent.name}/{log.name}: {line}"
                  for line in log.read_text().splitlines() if "[disteval]" in line]
    return lines
