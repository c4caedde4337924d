"""The score an item sees is exactly what lm_eval.simple_evaluate returns directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SUITES, Demo
from helpers import good_model_suite

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
    good_model_suite(project, "eq", demo.good, """\
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
