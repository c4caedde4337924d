"""Data parallelism through the plugin: request shards on CPU processes, same scores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_disteval.gpu.inventory import FakeInventory
from pytest_disteval.gpu.lease import LeaseManager

from conftest import Demo
from helpers import DP_TASKS, model_block, write_suite

pytestmark = pytest.mark.slow

TASKS = DP_TASKS


def dp_suite(project: pytest.Pytester, demo: Demo) -> None:
    # the untrained model: scores away from 0 and 1, so a wrong shard would show
    write_suite(project, "dp", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak, extra="timeout: 5m\n") + TASKS)


def two_model_suite(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "two", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + model_block("weak", demo.weak) + """\
tasks:
  - task: arith_mc
    limit: 20
    thresholds: {acc: 0.0}
""")


def results(base: Path) -> dict[str, object]:
    data = json.loads((base / "results" / "suites" / "dp" / "weak.json").read_text())
    return {task: data["results"][task] for task in ("arith_mc", "arith_gen")}


def starts(base: Path) -> list[dict[str, object]]:
    lines = (base / "workers.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "start"]


def test_same_scores_for_dp_1_2_and_3(project: pytest.Pytester, demo: Demo) -> None:
    dp_suite(project, demo)
    scores = {}
    for dp in (1, 2, 3):
        base = project.path / f"dp{dp}"
        project.runpytest("suites", f"--disteval-dir={base}", "--gpus", "0",
                          "--dp", str(dp)).assert_outcomes(passed=2)
        scores[dp] = results(base)
        modes = sorted(str(r["mode"]) for r in starts(base))
        assert modes == (["direct"] if dp == 1 else ["score"] + ["shard"] * dp)
        for log in (base / "logs").glob("*shard*.log"):
            assert log.read_text().count("model loaded") == 1  # once per group per job
    assert scores[1] == scores[2] == scores[3]
    assert 0 < scores[1]["arith_mc"]["acc,none"] < 1  # type: ignore[index]


def test_a_failed_shard_is_retried_once_on_another_group(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    dp_suite(project, demo)
    monkeypatch.setenv("DISTEVAL_FAULT", "shard0:once")
    base = project.path / "retry"
    result = project.runpytest("suites", f"--disteval-dir={base}",
                               "--disteval-fake-gpus", "2x80GiB", "--dp", "2")
    result.assert_outcomes(passed=2)
    shard0 = [r["gpus"] for r in starts(base) if "shard0" in str(r["worker"])]
    assert shard0 == [[0], [1]]  # first on group 0, the retry on group 1

    monkeypatch.setenv("DISTEVAL_FAULT", "shard1:always")
    result = project.runpytest("suites", f"--disteval-dir={project.path / 'fail'}",
                               "--disteval-fake-gpus", "2x80GiB", "--dp", "2")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*shard 1 of 2 failed twice (the retry ran on another group): *fault injected*",
        "last lines of the log:",
    ])


def test_ctrl_c_leaves_no_worker_and_no_lease(project: pytest.Pytester, demo: Demo) -> None:
    dp_suite(project, demo)
    base = project.path / "interrupted"
    env = {**os.environ, "PYTEST_DISTEVAL_LOCK_DIR": str(project.path / "locks")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites",
         f"--disteval-dir={base}", "--disteval-fake-gpus", "2x80GiB", "--dp", "2"],
        cwd=project.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        # a shell that ran this in the background ignores SIGINT, and so would the child:
        # Python then installs no KeyboardInterrupt handler and the Ctrl-C never lands
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = base / "workers.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the shard workers never started")
    time.sleep(1.0)  # let them get going
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert "KeyboardInterrupt" in output
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(base) not in ps, "a worker outlived the interrupted session"
    leases = LeaseManager(project.path / "locks")
    for gpu in FakeInventory.from_spec("2x80GiB").gpus():
        assert leases.holder(gpu) is None


def test_n_auto_is_one_xdist_worker_per_group_and_jobs_take_disjoint_groups(
        project: pytest.Pytester, demo: Demo) -> None:
    pytest.importorskip("xdist")
    two_model_suite(project, demo)
    base = project.path / "xd"
    result = project.runpytest_subprocess("suites", f"--disteval-dir={base}", "-p", "xdist",
                                          "-n", "auto", "--disteval-fake-gpus", "4x80GiB",
                                          "--tp", "2")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["created: 2/2 workers"])
    groups = {str(r["job"]): r["gpus"] for r in starts(base)}
    assert set(groups) == {"suites/two.yaml::good", "suites/two.yaml::weak"}
    assert all(len(g) == 2 for g in groups.values())  # type: ignore[arg-type]
    assert sorted(sum(groups.values(), [])) == [0, 1, 2, 3]  # type: ignore[arg-type]


def test_replicas_packed_on_one_group(project: pytest.Pytester, demo: Demo) -> None:
    dp_suite(project, demo)
    base = project.path / "packed"
    result = project.runpytest("suites", f"--disteval-dir={base}", "--disteval-fake-gpus",
                               "1x80GiB", "--disteval-pack", "2")
    result.assert_outcomes(passed=2)
    shards = [r["gpus"] for r in starts(base) if r["mode"] == "shard"]
    assert shards == [[0], [0]] or sorted(map(str, shards)) == ["[0]", "[0]"]
    direct = project.path / "direct"
    project.runpytest("suites", f"--disteval-dir={direct}", "--gpus", "0").assert_outcomes(
        passed=2)
    assert results(base) == results(direct)


def test_jobs_run_side_by_side_on_free_groups_without_xdist(
        project: pytest.Pytester, demo: Demo) -> None:
    two_model_suite(project, demo)
    base = project.path / "side"
    result = project.runpytest("suites", f"--disteval-dir={base}",
                               "--disteval-fake-gpus", "4x80GiB", "--tp", "2")
    result.assert_outcomes(passed=2)
    events = [json.loads(line) for line in (base / "workers.jsonl").read_text().splitlines()]
    order = [(e["event"], e["job"]) for e in events]
    # both jobs started before either ended, each on a group of its own
    assert [e for e, _ in order[:2]] == ["start", "start"]
    gpus = [e["gpus"] for e in events if e["event"] == "start"]
    assert len(gpus) == 2 and not set(gpus[0]) & set(gpus[1])
