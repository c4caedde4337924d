"""Budgets on the demo model: one real run (and its cached rerun) checked by several tests.

Some budgets are set to pass, some to fail, and the GPU ones are skipped on this CPU
machine. A third run with --dp 2 checks that sharded runs sum their shards' counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import DEMO_MODELS, ROOT, SUITES
from helpers import model_block

pytestmark = pytest.mark.slow

BUDGETS = """\
budgets:
  wall_time: 10m
  load_time: 5m
  task_time: 10m
  requests_per_s: 1 req/s
  tokens_per_s: 10000000/s
  host_rss: 1MiB
  gpu_memory: 20GiB
  group_gpu_memory: 80GB
  gpu_util: 40%
"""
SUITE = ("disteval: 1\ninclude: [tasks]\nmodels:\n"
         + model_block("good", DEMO_MODELS / "tiny-arith", extra=BUDGETS)) + """\
tasks:
  - task: arith_mc
    limit: 40
    thresholds: {acc: 0.9}
  - task: arith_gen
    limit: 10
    thresholds:
      exact_match,strict-match: 0.9
    budgets: {task_time: 1ms}
"""


@dataclass
class Run:
    stdout: str
    xml: Path
    record: dict[str, Any]  # config.disteval.job of the results file, after this run

    def props(self, nodeid_tail: tuple[str, str]) -> dict[str, str]:
        classname, name = nodeid_tail
        for case in ET.parse(self.xml).iter("testcase"):
            if case.get("classname") == classname and case.get("name") == name:
                return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        raise AssertionError(f"no test case {nodeid_tail} in {self.xml}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run, Run]:
    """The suite evaluated, answered from the store, then one budget's job again on dp 2."""
    root = tmp_path_factory.mktemp("budgets")
    shutil.copytree(SUITES / "tasks", root / "suites" / "tasks")
    shutil.copytree(SUITES / "data", root / "suites" / "data")
    (root / "suites" / "budget.yaml").write_text(SUITE, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    out = []
    results = root / ".disteval" / "results" / "suites" / "budget" / "good.json"
    for name, extra in (("fresh", []), ("cached", []),
                        ("dp2", ["--dp", "2", "--disteval-no-cache", "-k", "tokens_per_s"])):
        xml = root / f"{name}.xml"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "suites", "-rs",
             f"--junitxml={xml}", "--disteval-dir=.disteval", *extra],
            cwd=root, env=env, capture_output=True, text=True, timeout=600)
        record = json.loads(results.read_text())["config"]["disteval"]["job"]
        out.append(Run(proc.stdout + proc.stderr, xml, record))
    return out[0], out[1], out[2]


OUTCOMES = "3 failed, 6 passed, 3 skipped"


def test_budgets_pass_and_fail_with_messages_that_say_which_way(runs: tuple[Run, Run, Run]) -> None:
    fresh = runs[0]
    assert OUTCOMES in fresh.stdout, fresh.stdout[-3000:]
    for expected in (
        "tokens_per_s = *, required >= 10000000/s, short by *",
        "tokens counted: *, over *s of evaluation (lm-eval's simple_evaluate calls)",
        "host_rss = * ?iB, required <= 1 MiB, over by *",
        "task_time = *, required <= 1ms, over by *",
        "defined at: suites/budget.yaml:27",
    ):
        pytest.LineMatcher(fresh.stdout.splitlines()).fnmatch_lines([expected])
    pytest.LineMatcher(fresh.stdout.splitlines()).fnmatch_lines([
        "*disteval summary*",
        "good*arith_mc*task_time*s*task_time <= 10.0m*PASS*",
        "good*arith_gen*task_time*task_time <= 1ms*FAIL*",
        "good*(budget)*requests_per_s*req/s*requests_per_s >= 1/s*PASS*",
        "good*(budget)*tokens_per_s*tok/s*FAIL*",
        "good*(budget)*gpu_memory*-*SKIP*",
    ])


def test_gpu_budgets_are_skipped_on_the_cpu_with_the_reason(runs: tuple[Run, Run, Run]) -> None:
    fresh = runs[0]
    for line in (16, 17, 18):
        assert (f"SKIPPED [1] suites/budget.yaml:{line}: the job ran on the CPU: there is no "
                "GPU for NVML to sample") in fresh.stdout


def test_budget_items_carry_their_figures_as_properties(runs: tuple[Run, Run, Run]) -> None:
    fresh = runs[0]
    props = fresh.props(("suites.budget.yaml.good", "tokens_per_s"))
    assert props["budget"] == "tokens_per_s" and props["unit"] == "tok/s"
    assert props["bound"] == "tokens_per_s >= 10000000/s" and props["verdict"] == "fail"
    record = fresh.record
    assert float(props["measured"]) == record["tokens_per_s"]
    rss = fresh.props(("suites.budget.yaml.good", "host_rss"))
    assert rss["unit"] == "GiB"
    assert float(rss["measured"]) == round(record["host_peak_rss_bytes"] / 2**30, 4)
    task = fresh.props(("suites.budget.yaml.good.arith_mc", "task_time"))
    assert task["verdict"] == "pass" and task["task"] == "arith_mc" and task["unit"] == "s"
    assert "measured" not in fresh.props(("suites.budget.yaml.good", "gpu_util"))


def test_the_job_record_in_the_results_file(runs: tuple[Run, Run, Run]) -> None:
    fresh = runs[0]
    record = fresh.record
    assert record["layout"] == {"tp": 1, "pp": 1, "dp": 1, "pack": 1}
    assert record["device"] == "cpu" and record["gpus"] == [] and record["groups"] == []
    assert record["gpu"] is None and record["cached"] is False
    tasks = record["tasks"]
    assert set(tasks) == {"arith_mc", "arith_gen"}
    # one generate_until request per document; loglikelihood: one per document and choice
    assert tasks["arith_gen"]["requests"] == 10
    assert tasks["arith_mc"]["requests"] % 40 == 0 and tasks["arith_mc"]["requests"] >= 80
    for t in tasks.values():
        assert t["tokens"] > t["requests"] and 0 < t["eval_s"] < record["wall_s"]
    assert record["requests"] == sum(t["requests"] for t in tasks.values())
    assert record["tokens"] == sum(t["tokens"] for t in tasks.values())
    assert record["requests_per_s"] == round(record["requests"] / record["eval_s"], 3)
    assert record["tokens_per_s"] == round(record["tokens"] / record["eval_s"], 3)
    assert 0 < record["load_s"] < record["wall_s"]
    assert record["host_peak_rss_bytes"] > 100 * 2**20  # torch alone is more


def test_a_sharded_job_counts_the_same_requests_and_tokens(runs: tuple[Run, Run, Run]) -> None:
    fresh, _, dp2 = runs
    assert "1 failed, 11 deselected" in dp2.stdout, dp2.stdout[-3000:]  # tokens_per_s alone
    single, sharded = fresh.record, dp2.record
    assert sharded["layout"] == {"tp": 1, "pp": 1, "dp": 2, "pack": 1}
    assert sharded["cached"] is False and sharded["device"] == "cpu"
    # each request ran on exactly one shard, and each shard counted its own
    assert sharded["requests"] == single["requests"]
    assert sharded["tokens"] == single["tokens"]
    assert {n: (t["requests"], t["tokens"]) for n, t in sharded["tasks"].items()} == \
        {n: (t["requests"], t["tokens"]) for n, t in single["tasks"].items()}


def test_cached_results_are_judged_on_the_recorded_figures(runs: tuple[Run, Run, Run]) -> None:
    fresh, cached, _ = runs
    assert OUTCOMES in cached.stdout, cached.stdout[-3000:]
    assert "model loaded" not in cached.stdout
    pytest.LineMatcher(cached.stdout.splitlines()).fnmatch_lines([
        "good*(budget)*tokens_per_s*FAIL*(cached)*"])
    record = cached.record
    assert record["cached"] is True
    assert {k: v for k, v in record.items() if k != "cached"} == \
        {k: v for k, v in fresh.record.items() if k != "cached"}
    props = cached.props(("suites.budget.yaml.good", "tokens_per_s"))
    assert props["cached"] == "True"
