"""Preflight probes that run a program: the venv's hf CLI, the torch probe in a child."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_disteval.preflight import probe_torch
from pytest_disteval.preflight.disk import dataset_check


def test_the_download_fixes_name_a_command_this_venv_has(tmp_path: Path) -> None:
    # huggingface_hub installs `hf`; a fix naming another CLI is a dead instruction
    hf = Path(sys.executable).parent / "hf"
    if not hf.exists():
        pytest.skip(f"no hf next to {sys.executable}: huggingface_hub is not installed")
    fix = dataset_check("dataset t", "org/data", [], tmp_path, {"HF_HOME": str(tmp_path)}).fix
    command = fix.removeprefix("where there is network: ").split(" (")[0].split()
    assert command[:2] == ["hf", "download"], fix
    # the options the fixes use are the CLI's own (--help: parsed offline, nothing fetched)
    done = subprocess.run([str(hf), *command[1:-1], "--help"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "--repo-type" in done.stdout and "--revision" in done.stdout


def test_the_real_torch_probe_reads_versions_in_a_child_and_times_out() -> None:
    found = probe_torch(sys.executable)
    assert found.get("torch"), found
    # this venv's torch is a CPU build: no NCCL, and the reason is kept
    assert "nccl" in found or "nccl_error" in found
    slow = probe_torch(sys.executable, timeout=0.01)  # importing torch takes longer
    assert "took over" in slow["error"]
