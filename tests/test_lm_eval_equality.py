"""The score an item sees is exactly what lm_eval.simple_evaluate returns directly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SUITES, Demo
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow


DIRECT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, out = sys.argv[1:4]
results = lm_eval.simple_evaluate(
    model="hf", model_args={"pretrained": pretrained, "dtype": "float32"},
    tasks=["arith_mc", "arith_gen"], num_fewshot=3, limit=30, device="cpu", batch_size=64,
    task_manager=TaskManager(include_path=tasks_dir), log_samples=False)
json.dump({k: results[k] for k in ("results", "n-samples")}, open(out, "w"))
"""


def direct_simple_evaluate(demo: Demo, tmp_path: Path) -> dict[str, Any]:
    """lm-eval called directly, in a process of its own (as a user's script would)."""
    out = tmp_path / "direct.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # the task YAMLs' data_files are relative to suites/
    subprocess.run([sys.executable, "-c", DIRECT, str(demo.good), str(SUITES / "tasks"),
                    str(out)], cwd=SUITES, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_item_scores_equal_direct_simple_evaluate(project: pytest.Pytester, demo: Demo,
                                                  tmp_path: Path) -> None:
    write_suite(project, "eq", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + """\
tasks:
  - task: arith_mc
    num_fewshot: 3
    limit: 30
    thresholds: {acc: 0.0, acc_norm: 0.0}
  - task: arith_gen
    num_fewshot: 3
    limit: 30
    thresholds: {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}
""")
    run = project.runpytest("suites", "--junitxml=report.xml")
    run.assert_outcomes(passed=4)
    ours = json.loads((project.path / ".disteval/results/suites/eq/good.json").read_text())
    theirs = direct_simple_evaluate(demo, tmp_path)
    for task in ("arith_mc", "arith_gen"):
        assert ours["results"][task] == theirs["results"][task]
        assert ours["n-samples"][task] == theirs["n-samples"][task]
        assert ours["configs"][task]["num_fewshot"] == 3
    # and the items' own numbers are those: read back from the JUnit properties
    import xml.etree.ElementTree as ET

    tree = ET.parse(project.path / "report.xml")
    for case in tree.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        task = case.get("classname", "").rsplit(".", 1)[-1]
        expected = theirs["results"][task][props["metric"]]
        assert float(props["score"]) == expected


DIRECT_CALLS = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, calls, out = sys.argv[1:5]
merged = {"results": {}, "n-samples": {}}
for call in json.loads(calls):
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": pretrained, "dtype": "float32"}, device="cpu",
        batch_size=64, task_manager=TaskManager(include_path=tasks_dir), log_samples=False,
        **call)
    for key in merged:
        merged[key].update(results[key])
json.dump(merged, open(out, "w"))
"""

# arith_mc's and arith_gen's test split: 200 documents each (suites/data/arith_test.jsonl)
MC_IDS = [3, 17, 42, 43, 99, 120, 150, 151, 177, 198]
# what the worker draws for limit 12 with limit_seed 7, as docs/quick-look.md states it
GEN_IDS = sorted(random.Random(7).sample(range(200), 12))


@pytest.mark.parametrize("dp", [1, 3])
def test_samples_and_a_seeded_limit_equal_simple_evaluate_with_those_ids(
        project: pytest.Pytester, demo: Demo, tmp_path: Path, dp: int) -> None:
    # the untrained model: its scores on other documents would differ
    write_suite(project, "ids", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak) + f"""\
tasks:
  - task: arith_mc
    num_fewshot: 3
    samples: {list(reversed(MC_IDS))}
    thresholds: {{acc: 0.0}}
  - task: arith_gen
    limit: 12
    limit_seed: 7
    thresholds: {{"exact_match,flexible-extract": 0.0}}
""")
    run = project.runpytest("suites", "--gpus", "0", "--dp", str(dp))
    run.assert_outcomes(passed=2)
    base = project.path / ".disteval"
    ours = json.loads((base / "results/suites/ids/weak.json").read_text())
    calls = [{"tasks": ["arith_mc"], "num_fewshot": 3, "samples": {"arith_mc": MC_IDS}},
             {"tasks": ["arith_gen"], "samples": {"arith_gen": GEN_IDS}}]
    out = tmp_path / "direct.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", DIRECT_CALLS, str(demo.weak), str(SUITES / "tasks"),
                    json.dumps(calls), str(out)], cwd=SUITES, env=env, check=True,
                   capture_output=True)
    theirs = json.loads(out.read_text())
    for task in ("arith_mc", "arith_gen"):
        assert ours["results"][task] == theirs["results"][task]
        assert ours["n-samples"][task] == theirs["n-samples"][task]
    assert ours["n-samples"]["arith_mc"]["effective"] == len(MC_IDS)
    assert ours["config"]["disteval"]["entries"]["arith_mc"]["partial"] is True
    # every worker of the job (the shards and the scorer at dp 3) drew the same ids
    drawn = [line for log in (base / "logs").glob("*.log")
             for line in log.read_text().splitlines() if line.startswith("[disteval] samples:")]
    assert len(drawn) == (1 if dp == 1 else dp + 1) * 2  # two runs: other settings
    assert {json.dumps({"arith_gen": GEN_IDS}, separators=(",", ":")) in d for d in drawn} \
        == {True, False}
    assert len(set(drawn)) == 2
