"""NVML beside a Ray actor's worker, without Ray: the actor's side and the driver's.

The actor (executors/ray_actor.py) samples the GPUs its CUDA_VISIBLE_DEVICES names
while its worker subprocess runs, over an NVML with pynvml's interface; the driver
(executors/ray.py) writes the timeline into the run directory, renumbered over the
cluster, where the job record reads it. tests/integration/test_ray.py runs this through Ray.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.executors.base import WorkerTask
from pytest_disteval.executors.ray import RayExecutor, RayInventory
from pytest_disteval.executors.ray_actor import GroupActor
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.worker.spec import WorkerSpec

from fakenvml import FakeNvml

NODE_A, NODE_B = "a" * 40, "b" * 40


def _inventory() -> RayInventory:
    return RayInventory([
        {"node_id": NODE_A, "ip": "10.0.0.1", "gpus": 4, "cpus": 32, "accelerator": "H200"},
        {"node_id": NODE_B, "ip": "10.0.0.2", "gpus": 4, "cpus": 32, "accelerator": "H200"},
    ])


def _run_actor(tmp_path: Path, nvml: Any, *, sample_gpus: bool = True) -> dict[str, Any]:
    """One worker (a Python that sleeps a second) through GroupActor.run; its done message."""
    actor = GroupActor(nvml=nvml)
    spec = WorkerSpec(tmp_path / "error.json", tmp_path / "meta-shard0.json", model_key="m")
    command = ["python", "-c", "import time; time.sleep(1.0)", "SPEC"]
    messages = list(actor.run(command, spec, {}, 30.0, [], poll_s=0.05,
                              sample_gpus=sample_gpus))
    done = messages[-1]
    assert done["done"] and done["returncode"] == 0
    return done


def _where(node: str, ip: str) -> dict[str, Any]:
    return {"node_id": node, "node_ip": ip, "pid": 4242, "gpu_ids": ["1", "3"],
            "cuda_visible_devices": "1,3"}


def _finish(tmp_path: Path, executor: RayExecutor, name: str, done: dict[str, Any],
            where: dict[str, Any]) -> Path:
    task = WorkerTask([sys.executable], {}, tmp_path / f"{name}.log", 30.0,
                      WorkerSpec(tmp_path / "error.json", tmp_path / "meta.json"),
                      tmp_path / "spec.json",
                      name, group_size=2)
    executor._finish(task, done, where, [], tmp_path, 1.0)
    return tmp_path / f"gpu-{name}.json"


def test_the_actor_samples_the_gpus_ray_gave_it_and_the_driver_keeps_the_timeline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")  # what Ray sets in the actor
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    nvml = FakeNvml({0: [5], 1: [40, 60], 2: [5], 3: [90]})
    done = _run_actor(tmp_path, nvml)
    gpu = done["gpu"]
    assert gpu["unavailable"] is None and gpu["cuda_visible_devices"] == "1,3"
    assert sorted(gpu["gpus"]) == ["1", "3"] and len(gpu["t"]) >= 2  # 0.5 s apart
    assert nvml.samples[0] == nvml.samples[2] == 0  # not the actor's: never read

    executor = RayExecutor(None, tmp_path / "workers.jsonl")
    executor._inventory = _inventory()  # no Ray: the cluster as the driver read it
    path = _finish(tmp_path, executor, "job-shard0", done, _where(NODE_B, "10.0.0.2"))
    timeline = json.loads(path.read_text())
    # node B's GPUs come after node A's four: NVML 1 and 3 there are 5 and 7 here
    assert sorted(timeline["gpus"]) == ["5", "7"]
    assert timeline["gpus"]["7"] == gpu["gpus"]["3"]
    assert timeline["ray"]["nvml_index"] == {"5": 1, "7": 3}
    assert timeline["ray"]["node_ip"] == "10.0.0.2" and timeline["t"] == gpu["t"]

    # a second actor, on node A, on its NVML GPU 1: another GPU, not pooled with node B's
    other = _finish(tmp_path, executor, "job-shard1", done, _where(NODE_A, "10.0.0.1"))
    section, why = jobrecord.gpu_section([path, other])
    assert why is None and section is not None
    assert sorted(section["per_device"], key=int) == ["1", "3", "5", "7"]
    util_3 = sum(gpu["gpus"]["3"]["util_pct"]) / len(gpu["t"])
    assert section["per_device"]["7"]["mean_util_pct"] == round(util_3, 1) == 90.0


def test_without_nvml_on_the_node_the_timeline_says_why_and_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("Driver Not Loaded")

    done = _run_actor(tmp_path, NoDriver({0: [0]}))
    assert done["gpu"]["unavailable"] == "NVML unavailable (RuntimeError: Driver Not Loaded)"
    executor = RayExecutor(None, tmp_path / "workers.jsonl")
    executor._inventory = _inventory()
    path = _finish(tmp_path, executor, "job-shard0", done, _where(NODE_A, "10.0.0.1"))
    assert jobrecord.gpu_section([path]) == (
        None, "NVML unavailable (RuntimeError: Driver Not Loaded) on Ray node 10.0.0.1")
    assert json.loads(path.read_text())["ray"]["nvml_index"] is None  # nothing was mapped


def test_an_actor_without_gpus_sends_no_timeline(tmp_path: Path) -> None:
    done = _run_actor(tmp_path, FakeNvml({0: [0]}), sample_gpus=False)
    assert done["gpu"] is None
    executor = RayExecutor(None, tmp_path / "workers.jsonl")
    _finish(tmp_path, executor, "job-shard0", done, _where(NODE_A, "10.0.0.1"))
    assert not list(tmp_path.glob("gpu-*.json"))
