"""Preflight checks (pytest_disteval.preflight) against a fake NVML, fake disks and probes.

The real NvmlInventory code runs against a stand-in for the pynvml module (as in
test_gpus.py); only what cannot exist here (GPUs, a driver, NCCL) is faked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from test_gpus import FakeNvml

from pytest_disteval import preflight as doctor
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.planner import GpuOptions
from pytest_disteval.preflight import FAIL, PASS, WARN, Check, Doctor
from pytest_disteval.preflight.disk import dataset_check
from pytest_disteval.settings import Settings
from pytest_disteval.suite.parse import parse_suite

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


class DriverNvml(FakeNvml):
    """FakeNvml plus the system queries the doctor makes."""

    def __init__(self, *args: Any, driver: str = "550.54.15", cuda: int = 12040,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.driver, self.cuda = driver, cuda

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda


def scheduler(tmp_path: Path, *, model: str = "", tasks: str = "", **gpu: Any) -> JobScheduler:
    settings = Settings(base_dir=tmp_path / "dd", use_cache=True, clear_cache=False,
                        timeout=None, python=sys.executable, gpu=GpuOptions(**gpu))
    sched = JobScheduler(settings)
    model = model or f"{{pretrained: {ROOT / 'demo/models/tiny-arith'}, dtype: float32}}"
    text = f"""\
disteval: 1
include: [{ROOT / 'suites/tasks'}]
workdir: {ROOT / 'suites'}
models:
  - name: m
    backend: hf
    model_args: {model}
tasks:
{tasks or '  - task: arith_mc' + chr(10) + '    thresholds: {acc: 0.9}'}
"""
    suite = parse_suite(text, tmp_path / "s.yaml")
    spec = suite.models[0]
    sched.job_for(EvalJob(spec, suite), spec.tasks)
    return sched


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name.split(" suites")[0].split(" /")[0]: c for c in checks}


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> DriverNvml:
    fake = DriverNvml(count=4, nvlink=set(), ancestor={frozenset((0, 1)): 30,
                                                      frozenset((2, 3)): 30})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def nccl_ok() -> dict[str, Any]:
    return {"torch": "2.6.0", "cuda": "12.4", "nccl": "2.21.5"}


def test_a_healthy_gpu_machine_passes_and_a_pcie_tp_group_warns(tmp_path: Path,
                                                                  nvml: DriverNvml) -> None:
    sched = scheduler(tmp_path, tp=2)
    checks = by_name(Doctor(sched, probe=nccl_ok, free_bytes=lambda p: 500 * GiB).run())
    assert checks["gpus"].status == PASS and "4 of 4 visible" in checks["gpus"].detail
    assert checks["driver"].status == PASS
    assert checks["driver"].detail == ("driver 550.54.15, supports CUDA 12.4; torch 2.6.0 "
                                       "built for CUDA 12.4")
    assert checks["nccl"].status == PASS and "NCCL 2.21.5" in checks["nccl"].detail
    # GPUs 0,1 and 2,3 share a host bridge, no NVLink: tp all-reduces over PCIe
    link = checks["interconnect"]
    assert link.status == WARN and "PCIe" in link.detail and "--pp" in link.fix
    assert checks["model"].status == PASS and checks["dataset arith_mc"].status == PASS


def test_a_gpu_whose_memory_is_taken_before_the_run_warns(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Busy(DriverNvml):
        def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
            class Memory:
                total = 80 * GiB
                free = 20 * GiB if handle == 2 else 80 * GiB

            return Memory()

    monkeypatch.setitem(sys.modules, "pynvml", Busy(count=4))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    check = by_name(Doctor(scheduler(tmp_path), probe=nccl_ok).run())["gpus"]
    assert check.status == WARN
    assert "GPU 2 has 20 GiB of 80 GiB free" in check.detail and "nvidia-smi" in check.fix


def test_torch_built_for_a_newer_cuda_than_the_driver_fails(tmp_path: Path,
                                                            nvml: DriverNvml) -> None:
    nvml.cuda = 11080
    checks = by_name(Doctor(scheduler(tmp_path), probe=nccl_ok).run())
    assert checks["driver"].status == FAIL
    assert "supports CUDA 11.8; torch 2.6.0 built for CUDA 12.4" in checks["driver"].detail
    assert "install a driver for CUDA 12.4" in checks["driver"].fix


def test_more_gpus_requested_than_visible_fails(tmp_path: Path, nvml: DriverNvml) -> None:
    checks = by_name(Doctor(scheduler(tmp_path, gpus=8), probe=nccl_ok).run())
    assert checks["gpus"].status == FAIL
    assert "--gpus 8 asks for more GPUs than the 4 available" in checks["gpus"].detail


def test_nccl_is_read_only_where_a_group_spans_gpus(tmp_path: Path, nvml: DriverNvml) -> None:
    calls: list[int] = []

    def no_nccl() -> dict[str, Any]:
        calls.append(1)
        return {"torch": "2.6.0+cpu", "cuda": None, "nccl_error": "AttributeError: no NCCL"}

    single = Doctor(scheduler(tmp_path, tp=1), probe=no_nccl, preflight=True).run()
    assert calls == [] and "nccl" not in by_name(single)
    split = by_name(Doctor(scheduler(tmp_path, tp=2), probe=no_nccl, preflight=True).run())
    assert calls == [1] and split["nccl"].status == FAIL
    assert "has no NCCL" in split["nccl"].detail and "CUDA build of torch" in split["nccl"].fix


def test_low_disk_warns_and_an_offload_folder_smaller_than_the_model_fails(
        tmp_path: Path, nvml: DriverNvml) -> None:
    offload = tmp_path / "offload"
    model = (f"{{pretrained: {ROOT / 'demo/models/tiny-arith'}, dtype: float32, "
             f"offload_folder: {offload}}}")
    free = {offload: 1000}
    checks = by_name(Doctor(scheduler(tmp_path, model=model), probe=nccl_ok,
                            free_bytes=lambda p: free.get(p, 5 * GiB)).run())
    assert checks["disk disteval dir"].status == WARN
    assert "below 10 GiB" in checks["disk disteval dir"].detail
    assert checks["disk offload m"].status == FAIL
    assert "the model's weights are" in checks["disk offload m"].detail


def test_models_and_datasets_must_resolve_offline(tmp_path: Path, nvml: DriverNvml,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    model = "{pretrained: org/tiny, dtype: float32}"
    sched = scheduler(tmp_path, model=model, tasks="  - task: hub_task\n    thresholds: {x: 1}")
    checks = by_name(Doctor(sched, probe=nccl_ok).run())  # hub_task: not local, not built in
    assert checks["model"].status == FAIL
    assert "hf download org/tiny" in checks["model"].fix
    # the run fails such a job before its worker starts (jobs/precheck.py): so does the doctor
    assert checks["dataset hub_task"].status == FAIL
    assert "s.yaml:9) is neither a local task" in checks["dataset hub_task"].detail
    assert "lm-eval ls tasks" in checks["dataset hub_task"].fix
    # the same model in the HF cache resolves (a snapshot, as huggingface_hub lays it out)
    snap = home / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    checks = by_name(Doctor(scheduler(tmp_path, model=model), probe=nccl_ok).run())
    assert checks["model"].status == PASS and "HF cache snapshot" in checks["model"].detail


def test_a_hub_dataset_is_found_in_the_datasets_cache(tmp_path: Path) -> None:
    environ = {"HF_HOME": str(tmp_path)}
    missing = dataset_check("dataset t", "org/data", [], tmp_path, environ)
    assert missing.status == WARN and "hf download --repo-type dataset org/data" in missing.fix
    (tmp_path / "datasets" / "org___data").mkdir(parents=True)
    found = dataset_check("dataset t", "org/data", [], tmp_path, environ)
    assert found.status == PASS and "org___data" in found.detail




def test_cpu_runs_need_no_gpu_checks(tmp_path: Path) -> None:
    checks = by_name(Doctor(scheduler(tmp_path, gpus=0), free_bytes=lambda p: 500 * GiB).run())
    assert checks["gpus"].status == PASS and "--gpus 0" in checks["gpus"].detail
    assert "driver" not in checks and "nccl" not in checks and "interconnect" not in checks
    assert all(c.status == PASS for c in checks.values()), checks




def test_render_shows_fixes_of_problems_only() -> None:
    lines = doctor.render([Check("gpus", PASS, "8 visible", "unused"),
                           Check("nccl", FAIL, "no NCCL", "install torch with CUDA")])
    assert lines == ["PASS  gpus  8 visible", "FAIL  nccl  no NCCL",
                     "            fix: install torch with CUDA"]
    assert doctor.counts([Check("a", PASS, ""), Check("b", WARN, "")]) == \
        "1 passed, 1 warnings, 0 failed"


def test_packed_replicas_on_a_real_gpu_warn_without_an_mps_daemon(tmp_path: Path,
                                                                  nvml: DriverNvml) -> None:
    pipe = tmp_path / "mps"
    pipe.mkdir()
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe)}

    def packing(**gpu: Any) -> Check | None:
        checks = Doctor(scheduler(tmp_path, **gpu), environ=env, probe=nccl_ok,
                        free_bytes=lambda p: 500 * GiB).run()
        return by_name(checks).get("packing")

    assert packing() is None  # one replica per group: nothing shares a GPU
    check = packing(pack=2)
    assert check is not None and check.status == WARN
    assert f"{pipe}/control absent" in check.detail
    assert "nvidia-cuda-mps-control -d" in check.fix
    (pipe / "control").touch()  # the daemon's control pipe
    check = packing(pack=2)
    assert check is not None and check.status == PASS and str(pipe) in check.detail
