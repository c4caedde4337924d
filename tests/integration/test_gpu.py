"""What only a GPU can show: NVML inventory and leases, hf and vllm on CUDA, OOM, hangs.

Marked ``gpu``; skipped where NVML finds no GPU (CI has none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_disteval.gpu.inventory import NoGPUError, NvmlInventory
from pytest_disteval.gpu.lease import LeaseManager

from conftest import ROOT, Demo
from helpers import write_suite


def _inventory() -> NvmlInventory | None:
    try:
        inv = NvmlInventory()
    except (NoGPUError, ImportError):
        return None
    return inv if inv.gpus() else None


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_inventory() is None, reason="no GPU visible to NVML")]


def test_nvml_inventory_and_a_real_lease(tmp_path_factory: pytest.TempPathFactory) -> None:
    inv = _inventory()
    assert inv is not None
    gpu = inv.gpus()[0]
    assert gpu.uuid.startswith("GPU-") and gpu.total_memory > 10 * 2**30
    leases = LeaseManager(tmp_path_factory.mktemp("locks"))
    with leases.acquire([gpu], owner="test") as lease:
        holder = leases.holder(gpu)
        assert holder is not None and holder["pid"] == os.getpid()
        assert lease.env({})["CUDA_VISIBLE_DEVICES"] == str(gpu.index)
        assert leases.try_acquire([gpu]) is None  # not twice, even in one process
    assert leases.holder(gpu) is None


def test_the_hf_backend_runs_on_a_gpu(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "gpu", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: good
            backend: hf
            model_args: {{pretrained: {demo.good}, dtype: float32}}
            batch_size: 64
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
        """)
    base = project.path / ".disteval"
    project.runpytest("suites", "--gpus", "1", "--junitxml=r.xml").assert_outcomes(passed=1)
    # the NVML sampler ran beside the worker: a timeline and the item's properties
    (timeline,) = (base / "runs").glob("*/gpu-*.json")
    assert json.loads(timeline.read_text())["t"]
    xml = (project.path / "r.xml").read_text()
    assert 'name="gpu_mean_util_pct"' in xml and 'name="gpu_peak_mem_gib"' in xml
    spec = json.loads(next((base / "runs").glob("*/spec.json")).read_text())
    assert spec["device"] == "cuda"
    (start,) = [r for r in map(json.loads, (base / "workers.jsonl").read_text().splitlines())
                if r["event"] == "start"]
    assert start["gpus"] == [_inventory().gpus()[0].index]  # type: ignore[union-attr]
    # auto forks GPU jobs too, from a server that imported torch without starting CUDA
    (log,) = (base / "logs").glob("*.log")
    assert "forked from the forkserver" in log.read_text()


def test_forked_workers_on_a_gpu_see_their_group_and_score_the_same(
        project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "gpu", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: weak
            backend: hf
            model_args: {{pretrained: {demo.weak}, dtype: float32}}
            batch_size: 64
        tasks:
          - task: arith_mc
            limit: 100
            thresholds: {{acc: 0.0}}
        """)
    scores = {}
    for start in ("auto", "subprocess"):  # auto: the default forks GPU jobs too
        base = project.path / start
        project.runpytest("suites", "--gpus", "1", "--disteval-pack", "2",
                          f"--disteval-dir={base}", f"--disteval-worker-start={start}"
                          ).assert_outcomes(passed=1)
        data = json.loads((base / "results" / "suites" / "gpu" / "weak.json").read_text())
        scores[start] = data["results"]["arith_mc"]
        logs = {p.name: p.read_text() for p in (base / "logs").glob("*.log")}
        forked = [n for n, t in logs.items() if "forked from the forkserver" in t]
        if start == "auto":
            # the server imported torch without initialising CUDA (else it would have
            # refused and said why in each log): both shards and the scorer forked
            assert len(forked) == 3, logs
            gpu = str(_inventory().gpus()[0].index)  # type: ignore[union-attr]
            for name, text in logs.items():
                if "shard" in name:
                    assert f"imports done there; CUDA_VISIBLE_DEVICES={gpu}" in text
        else:
            assert forked == []
    assert scores["auto"] == scores["subprocess"]


def test_a_real_cuda_oom_is_retried_at_smaller_batches(project: pytest.Pytester) -> None:
    # a 32000-token vocabulary makes the logits the big allocation: lm-eval runs the
    # 4 choices of a document as one row, so 1,000 rows of ~1,500 tokens in one batch
    # need ~190 GB of bf16 logits and log-probabilities, more than any GPU has
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from realistic import make_model, make_tasks

    model = make_model(project.path / "tiny-32k", "tiny", device="cpu")
    make_tasks(project.path / "suites", docs=1000, gen_docs=0, context_chars=1500)
    write_suite(project, "oom", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: tiny
            backend: hf
            model_args: {{pretrained: {model}, dtype: bfloat16}}
            batch_size: 8192
        tasks:
          - task: bench_mc
            thresholds: {{acc: 0.0}}
        """)
    result = project.runpytest("suites", "--gpus", "1", "--disteval-timeout", "8m")
    result.assert_outcomes(passed=1)
    base = project.path / ".disteval"
    (meta,) = (base / "runs").glob("*/meta.json")
    retries = json.loads(meta.read_text())["timing"]["oom_retries"]
    assert retries and retries[0] == {"from": 8192, "to": 4096}


def test_a_hung_gpu_worker_is_killed_and_its_gpu_freed(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    write_suite(project, "hang", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: good
            backend: hf
            model_args: {{pretrained: {demo.good}, dtype: float32}}
            timeout: 25s
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
        """)
    inv = _inventory()
    assert inv is not None
    gpu = inv.gpus()[0]
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)

    def on_gpu() -> set[int]:
        return {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}

    before = on_gpu()
    monkeypatch.setenv("DISTEVAL_FAULT", "hang")
    result = project.runpytest("suites", "--gpu-ids", str(gpu.index))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*worker killed after the job timeout of 25s*"])
    (log,) = (project.path / ".disteval" / "logs").glob("*.log")
    assert "hanging (DISTEVAL_FAULT=hang)" in log.read_text()  # it hung with the model loaded
    # killed as a process group: nothing of it holds the GPU, and the lease is free
    assert on_gpu() <= before
    assert LeaseManager().holder(gpu) is None


def test_the_vllm_backend_matches_hf_and_starts_its_engine_once(
        project: pytest.Pytester, demo: Demo) -> None:
    import importlib.util

    # found, not imported: importing vllm here would import torch into this process
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    models = ""
    for name, backend, extra in (
            ("hf", "hf", ""),
            ("vllm", "vllm", ", gpu_memory_utilization: 0.3, enforce_eager: true")):
        models += f"""\
          - name: {name}
            backend: {backend}
            model_args: {{pretrained: {demo.good}, dtype: bfloat16{extra}}}
            batch_size: {'auto' if backend == 'vllm' else 64}
"""
    write_suite(project, "vllm", f"""\
        disteval: 1
        include: [tasks]
        models:
{models}
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
          - task: arith_gen
            num_fewshot: 3
            thresholds: {{"exact_match,strict-match": 0.9}}
        """)
    result = project.runpytest("suites", "--gpus", "1", "--disteval-timeout", "8m")
    result.assert_outcomes(passed=4)
    base = project.path / ".disteval"
    scores = {}
    for name in ("hf", "vllm"):
        data = json.loads(next((base / "results").rglob(f"{name}.json")).read_text())
        scores[name] = (data["results"]["arith_mc"]["acc,none"],
                        data["results"]["arith_gen"]["exact_match,strict-match"])
    # bf16 numerics differ between the two engines' kernels: a document or two may flip
    assert abs(scores["hf"][0] - scores["vllm"][0]) <= 0.02, scores
    assert abs(scores["hf"][1] - scores["vllm"][1]) <= 0.02, scores
    (log,) = [p for p in (base / "logs").glob("vllm-*.log")]
    text = log.read_text()
    # one worker, one model load, one engine for the job's two settings groups
    assert text.count("[disteval] model loaded in") == 1
    assert text.count("[disteval] evaluating") == 2


def test_nvml_budgets_on_a_real_gpu(project: pytest.Pytester, demo: Demo) -> None:
    """gpu_memory, group_gpu_memory and gpu_util judged on the NVML sampler's timeline."""
    write_suite(project, "gpu-budgets", f"""\
        disteval: 1
        include: [tasks]
        models:
          - name: good
            backend: hf
            model_args: {{pretrained: {demo.good}, dtype: float32}}
            batch_size: 64
            budgets:
              gpu_memory: 100GiB
              group_gpu_memory: 1MiB
              gpu_util: 100%
              tokens_per_s: 1/s
        tasks:
          - task: arith_mc
            thresholds: {{acc: 0.9}}
        """)
    result = project.runpytest("suites", "--gpus", "1", "--junitxml=r.xml", "-rs")
    # 1MiB cannot hold a CUDA context, and the GPU idles while the model loads
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["group_gpu_memory = * GiB, required <= 1 MiB, over by *"])
    result.stdout.fnmatch_lines(["gpu_util = *%, required >= 100.0%, short by *%",
                                 "mean utilisation per GPU: GPU *"])
    base = project.path / ".disteval"
    record = json.loads((base / "results" / "suites" / "gpu-budgets" / "good.json")
                        .read_text())["config"]["disteval"]["job"]
    gpu = _inventory().gpus()[0]  # type: ignore[union-attr]
    assert record["device"] == "cuda" and record["groups"] == [[gpu.index]]
    assert record["gpus"][0]["uuid"] == gpu.uuid
    assert record["gpus"][0]["memory_total_bytes"] == gpu.total_memory
    figures = record["gpu"]["per_device"][str(gpu.index)]
    assert 2**20 < figures["peak_mem_bytes"] <= gpu.total_memory
    assert record["gpu"]["group_peak_mem_bytes"] == figures["peak_mem_bytes"]  # one GPU
    assert 0 <= figures["mean_util_pct"] <= 100 and record["gpu"]["imbalance"] is None
    (timeline,) = record["gpu"]["timelines"]
    assert json.loads(Path(timeline).read_text())["t"]
    assert record["tokens"] > record["requests"] > 0
