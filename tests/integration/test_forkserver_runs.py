"""Whole runs with workers forked from the forkserver: same scores, one import per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import Demo
from helpers import DP_TASKS, model_block, write_suite


def _suite(project: pytest.Pytester, demo: Demo) -> None:
    # the untrained model: scores away from 0 and 1, so a worker that differed would show
    write_suite(project, "fork", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak) + DP_TASKS)


def _results(base: Path) -> dict[str, object]:
    data = json.loads((base / "results" / "suites" / "fork" / "weak.json").read_text())
    return {task: data["results"][task] for task in ("arith_mc", "arith_gen")}


def _worker_logs(base: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (base / "logs").glob("*.log")}


def test_auto_and_forkserver_fork_hf_and_scoring_workers_on_cpu_and_gpu_alike() -> None:
    from types import SimpleNamespace

    from pytest_disteval.backends import BACKENDS
    from pytest_disteval.executors.forkserver import COMMON_PRELOAD
    from pytest_disteval.jobs.launch import Launcher

    def preload(start: str, backend: str = "hf", mode: str = "direct") -> object:
        # no plan is passed: where the job runs (CPU or GPU) does not decide it
        launcher = SimpleNamespace(settings=SimpleNamespace(worker_start=start))
        return Launcher.preload(launcher, BACKENDS[backend], mode)  # type: ignore

    assert preload("auto") == BACKENDS["hf"].preload  # GPU jobs fork too
    assert preload("forkserver") == BACKENDS["hf"].preload
    assert preload("forkserver", mode="score") == COMMON_PRELOAD
    assert preload("forkserver", backend="vllm") is None  # never forked
    assert preload("subprocess") is None


def test_forked_and_subprocess_workers_give_the_same_scores(
        project: pytest.Pytester, demo: Demo) -> None:
    _suite(project, demo)
    scores = {}
    for start in ("forkserver", "subprocess"):
        base = project.path / start
        project.runpytest("suites", f"--disteval-dir={base}",
                          f"--disteval-worker-start={start}").assert_outcomes(passed=2)
        scores[start] = _results(base)
        (log,) = _worker_logs(base).values()
        assert ("forked from the forkserver" in log) == (start == "forkserver")
        assert (base / "logs" / "forkserver").is_dir() == (start == "forkserver")
    assert scores["forkserver"] == scores["subprocess"]


def test_dp_shards_and_the_scoring_worker_fork_from_one_server(
        project: pytest.Pytester, demo: Demo) -> None:
    _suite(project, demo)
    base = project.path / "dp"
    # fake GPUs: each shard's lease sets CUDA variables of its own, after the fork
    project.runpytest("suites", f"--disteval-dir={base}", "--disteval-fake-gpus", "2x80GiB",
                      "--dp", "2").assert_outcomes(passed=2)
    logs = _worker_logs(base)
    assert len(logs) == 3 and all("forked from the forkserver" in t for t in logs.values())
    servers = list((base / "logs" / "forkserver").glob("*.log"))
    assert len(servers) == 1  # the scoring worker's imports are a subset of the shards'
    # the shards share the cores: the forked child took its OMP_NUM_THREADS share
    share = max(1, (os.cpu_count() or 1) // 2)
    visible = set()
    for name, text in logs.items():
        if "shard" in name:
            assert f"(torch threads {share})" in text, text
            visible |= {line.rsplit("=", 1)[1] for line in text.splitlines()
                        if "imports done there; CUDA_VISIBLE_DEVICES=" in line}
    assert len(visible) == 2  # one group each


def test_a_warm_rerun_starts_no_forkserver(project: pytest.Pytester, demo: Demo) -> None:
    _suite(project, demo)
    base = project.path / "warm"
    project.runpytest("suites", f"--disteval-dir={base}").assert_outcomes(passed=2)
    assert (base / "logs" / "forkserver").is_dir()
    for path in (base / "logs" / "forkserver").glob("*"):
        path.unlink()
    project.runpytest("suites", f"--disteval-dir={base}").assert_outcomes(passed=2)
    assert list((base / "logs" / "forkserver").glob("*")) == []


def test_worker_start_is_an_option_an_ini_key_and_checked(
        project: pytest.Pytester, demo: Demo) -> None:
    _suite(project, demo)
    result = project.runpytest("suites", "--disteval-worker-start=threads")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--disteval-worker-start: 'threads' is not valid: one of "
                                 "auto, forkserver, subprocess*"])
    project.makeini("[pytest]\ndisteval_worker_start = subprocess\n")
    base = project.path / "ini"
    project.runpytest("suites", f"--disteval-dir={base}").assert_outcomes(passed=2)
    assert not (base / "logs" / "forkserver").exists()


def test_the_plan_says_how_each_jobs_workers_start(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "plan", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak) + f"""\
  - name: served
    backend: vllm
    model_args: {{pretrained: {demo.weak}}}
""" + DP_TASKS)
    result = project.runpytest("suites", "--disteval-plan")
    result.stdout.fnmatch_lines([
        "job suites/plan.yaml::weak  backend=hf*",
        "  workers: forked from the session's forkserver (torch, transformers and lm-eval "
        "imported once)",
        "job suites/plan.yaml::served  backend=vllm*",
        "  workers: subprocesses (vllm workers are not forked)"])
    result = project.runpytest("suites", "--disteval-plan", "--disteval-worker-start",
                               "subprocess")
    result.stdout.fnmatch_lines(["job suites/plan.yaml::weak  backend=hf*",
                                 "  workers: subprocesses (--disteval-worker-start subprocess)"])
