"""The package's own hooks (hookspecs.py): a plugin adds items to task entries."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import pytest_disteval

from conftest import Demo
from helpers import model_block, write_suite

SUITE = """\
disteval: 1
include: [tasks]
models:
{model}tasks:
  - task: arith_mc
    thresholds: {{acc: 0.5}}
  - task: arith_gen
    name: arith_gen-3shot
    num_fewshot: 3
    thresholds:
      exact_match,strict-match: 0.5
"""

# a third-party plugin: one item per task entry that checks the entry, no worker needed
PLUGIN = """\
import pytest


class FewshotItem(pytest.Item):
    def __init__(self, *, entry, **kwargs):
        super().__init__(**kwargs)
        self.entry = entry

    def runtest(self):
        assert self.entry.num_fewshot in (None, 0), f"{self.entry.name} is few-shot"


def pytest_disteval_task_items(collector, entry):
    return [FewshotItem.from_parent(collector, name="zero-shot", entry=entry)]
"""


@pytest.fixture
def with_plugin(project: pytest.Pytester, demo: Demo) -> pytest.Pytester:
    write_suite(project, "smoke", SUITE.format(model=model_block("tiny", demo.good)))
    project.makepyfile(fewshot_items=PLUGIN)
    project.syspathinsert()
    return project


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("suites/")]


def test_a_plugin_adds_items_to_every_task_entry(with_plugin: pytest.Pytester) -> None:
    result = with_plugin.runpytest("-p", "fewshot_items", "--collect-only", "-q", "suites")
    assert collected(result) == [
        "suites/smoke.yaml::tiny::arith_mc::acc",
        "suites/smoke.yaml::tiny::arith_mc::zero-shot",
        "suites/smoke.yaml::tiny::arith_gen-3shot::exact_match,strict-match",
        "suites/smoke.yaml::tiny::arith_gen-3shot::zero-shot",
    ]
    # the items are the plugin's own: they run without a job, and see their entry
    ran = with_plugin.runpytest("-p", "fewshot_items", "-k", "zero-shot", "suites")
    ran.assert_outcomes(passed=1, failed=1)
    ran.stdout.fnmatch_lines(["*AssertionError: arith_gen-3shot is few-shot"])


def test_a_plugins_items_sit_beside_the_regression_items(with_plugin: pytest.Pytester) -> None:
    baseline = with_plugin.path / "b.json"
    baseline.write_text(json.dumps({"disteval_baseline": 1, "entries": {}}), encoding="utf-8")
    result = with_plugin.runpytest("-p", "fewshot_items", "--collect-only", "-q", "suites",
                                   f"--disteval-baseline={baseline}", "-k", "arith_mc")
    assert sorted(collected(result)) == [
        "suites/smoke.yaml::tiny::arith_mc::acc",
        "suites/smoke.yaml::tiny::arith_mc::acc[regression]",
        "suites/smoke.yaml::tiny::arith_mc::zero-shot",
    ]




def test_the_core_items_do_not_import_the_regression_feature() -> None:
    # the dependency runs one way, regression/ -> items/: not even a lazy import back
    items = Path(pytest_disteval.__file__).parent / "items"
    found = []
    for path in sorted(items.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.name}:{node.lineno}: {n}" for n in names
                      if n.startswith("pytest_disteval.regression")]
    assert found == []
