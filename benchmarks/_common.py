"""What the benchmark scripts share: the machine and software a figure was measured on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


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
