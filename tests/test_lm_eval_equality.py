"""The score an item sees is exactly what lm_eval.simple_evaluate returns directly."""

from __future__ import annotations

import json
import os

import pytest

from conftest import SUITES, Demo
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow


def direct_simple_evaluate(demo: Demo, tasks: list[str], num_fewshot: int, limit: int,
                           monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(SUITES)  # the task YAMLs' data_files are relative to suites/
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(demo.good), "dtype": "float32"},
        tasks=tasks, num_fewshot=num_fewshot, limit=limit, device="cpu", batch_size=64,
        task_manager=TaskManager(include_path=str(SUITES / "tasks")), log_samples=False)
    assert results is not None
    return results  # type: ignore[no-any-return]


def test_item_scores_equal_direct_simple_evaluate(project: pytest.Pytester, demo: Demo,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
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
    theirs = direct_simple_evaluate(demo, ["arith_mc", "arith_gen"], 3, 30, monkeypatch)
    for task in ("arith_mc", "arith_gen"):
        assert ours["results"][task] == theirs["results"][task]  # type: ignore[index]
        assert ours["n-samples"][task] == theirs["n-samples"][task]  # type: ignore[index]
        assert ours["configs"][task]["num_fewshot"] == 3
    # and the items' own numbers are those: read back from the JUnit properties
    import xml.etree.ElementTree as ET

    tree = ET.parse(project.path / "report.xml")
    for case in tree.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        task = case.get("classname", "").rsplit(".", 1)[-1]
        expected = theirs["results"][task][props["metric"]]  # type: ignore[index]
        assert float(props["score"]) == expected
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
