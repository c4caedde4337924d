"""Baselines end to end on the demo: save one, compare a worse model with it, and itself."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import Demo
from helpers import model_block, write_suite

TASKS = """\
tasks:
  - task: arith_mc
    limit: 60
    thresholds: {acc: 0.0}
    regression:
      acc_norm: {abs: 0.01}
  - task: arith_gen
    limit: 40
    thresholds:
      exact_match,strict-match: 0.0
"""
EXTRA = """\
  - task: arith_mc
    name: arith_mc-small
    limit: 10
    thresholds: {acc: 0.0}
"""


def suite(project: pytest.Pytester, weights: Path, *, extra: str = "") -> None:
    # one model name whatever the weights: the baseline is keyed by suite, model and entry
    write_suite(project, "regr", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("tiny-arith", weights) + TASKS + extra)


def properties(xml: Path) -> dict[str, dict[str, str]]:
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        out[f"{case.get('classname')}::{case.get('name')}"] = props
    return out


def entries(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["disteval_baseline"] == 1
    assert set(data["versions"]) == {"pytest_disteval", "lm_eval"}
    return data["entries"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_worse_model_fails_against_the_baseline_and_the_same_model_passes(
        project: pytest.Pytester, demo: Demo) -> None:
    pytest.importorskip("xdist")
    base = project.path / "store"
    saved = project.path / "baseline.json"

    # 1. save the trained model's baseline, on two CPU replicas (the sharded path)
    suite(project, demo.good)
    project.runpytest("suites", f"--disteval-dir={base}", "--gpus", "0", "--dp", "2",
                      f"--disteval-save-baseline={saved}").assert_outcomes(passed=2)
    recorded = entries(saved)
    assert set(recorded) == {"suites/regr.yaml::tiny-arith::arith_mc",
                             "suites/regr.yaml::tiny-arith::arith_gen"}
    mc = recorded["suites/regr.yaml::tiny-arith::arith_mc"]
    assert mc["hardware"] == "cpu" and mc["layout"] == {"tp": 1, "pp": 1, "dp": 2}
    assert mc["metrics"]["acc,none"] == {"value": 1.0, "stderr": 0.0, "n": 60,
                                         "higher_is_better": True}
    # the scoring worker of the sharded path logged lm-eval's samples too
    assert mc["samples"]["doc_id"] == list(range(60))
    assert mc["samples"]["metrics"]["acc,none"] == [1] * 60
    assert len(mc["samples"]["doc_hash"][0]) == 12

    # 2. the untrained model under the same name: every regression item fails, with flips;
    # an entry the baseline lacks is skipped
    suite(project, demo.weak, extra=EXTRA)
    xml = project.path / "weak.xml"
    result = project.runpytest("suites", f"--disteval-dir={base}", "-m", "regression",
                               f"--disteval-baseline={saved}", f"--junitxml={xml}", "-rs")
    result.assert_outcomes(failed=3, skipped=1)
    result.stdout.fnmatch_lines([
        "*_ tiny-arith::arith_mc::acc[[]regression[]] _*",
        "regressed by 0.*, beyond noise",
        "arith_mc acc: 0.* ± 0.* (n=60) now, baseline 1.0000 ± 0.0000 (n=60) (higher is better)",
        "test: exact McNemar on 60 paired documents: p = *e-* < alpha 0.05",
        "documents flipped: * better->worse, 0 worse->better",
        "  got worse: doc *: target '*', baseline '*', now '*'",
        "hardware: baseline cpu (tp=1 pp=1 dp=2); now cpu (tp=1 pp=1 dp=1)",
        f"baseline: {saved} (created *",
        "defined at: suites/regr.yaml:*",
    ])
    result.stdout.fnmatch_lines(["*delta: -0.* (tolerance 0.0100)"])  # acc_norm's tolerance
    result.stdout.fnmatch_lines([
        "SKIPPED * no baseline for suites/regr.yaml::tiny-arith::arith_mc-small in *"])
    result.stdout.fnmatch_lines(["tiny-arith*arith_mc*acc [[]regression[]]*baseline 1.0000 "
                                 "± 0.0000, mcnemar p=*FAIL*60*"])
    cases = properties(xml)
    [props] = [p for name, p in cases.items() if name.endswith("arith_mc::acc[regression]")]
    assert props["kind"] == "regression" and props["verdict"] == "fail"
    assert props["test"] == "mcnemar" and float(props["p_value"]) < 0.05
    assert int(props["flipped_worse"]) > 30 and props["flipped_better"] == "0"
    assert float(props["baseline_score"]) == 1.0 and float(props["delta"]) < -0.5
    assert props["baseline_hardware"] == "cpu (tp=1 pp=1 dp=2)"
    assert props["hardware"] == "cpu (tp=1 pp=1 dp=1)"
    assert props["alpha"] == "0.05" and props["defined_at"].startswith("suites/regr.yaml:")

    # 3. the trained model against its own baseline passes, under xdist, from the store (no
    # lm-eval run), and the baseline it saves again is the same
    suite(project, demo.good)
    workers = (base / "workers.jsonl").read_text()
    again = project.path / "again.json"
    result = project.runpytest_subprocess("suites", f"--disteval-dir={base}", "-p", "xdist",
                                          "-n", "2", f"--disteval-baseline={saved}",
                                          f"--disteval-save-baseline={again}")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([f"disteval: baseline of 2 task entries (2 with per-document "
                                 f"results) written to {again}"])
    assert (base / "workers.jsonl").read_text() == workers  # no worker started
    resaved = entries(again)
    for key, entry in recorded.items():
        assert resaved[key]["metrics"] == entry["metrics"]
        assert resaved[key]["samples"] == entry["samples"]
        assert resaved[key]["layout"] == {"tp": 1, "pp": 1, "dp": 1}


def write_baseline(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("{not json", "not valid JSON (Expecting property name * (char 1))"),
    ({"results": {}}, "not a pytest-disteval baseline (no 'disteval_baseline' format key)"),
    ({"disteval_baseline": 99, "entries": {}}, "baseline format 99 is not supported "
                                               "(this version reads format 1)"),
    ({"disteval_baseline": 1, "entries": {"a::b::c": {"metrics": {"acc,none": {}}}}},
     "entry 'a::b::c' has no valid 'metrics' (each with a numeric 'value')"),
])
def test_a_bad_baseline_file_is_a_usage_error_naming_it(
        project: pytest.Pytester, demo: Demo, content: Any, message: str) -> None:
    suite(project, demo.good)
    path = project.path / "b.json"
    if content is not None:
        write_baseline(path, content)
    result = project.runpytest("suites", "--collect-only", f"--disteval-baseline={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--disteval-baseline: {path}: {message}; write one with "
                                 "--disteval-save-baseline PATH"])


def test_alpha_must_be_a_probability(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good)
    result = project.runpytest("suites", "--collect-only", "--disteval-alpha", "5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--disteval-alpha: '5' is not valid: a significance level "
                                 "between 0 and 1, e.g. 0.05"])


def test_a_quick_look_cannot_be_saved_as_a_baseline(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good)
    result = project.runpytest("suites", "--collect-only", "--disteval-limit", "20",
                               f"--disteval-save-baseline={project.path / 'b.json'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--disteval-save-baseline cannot be combined with "
                                 "--disteval-limit 20: a baseline records full runs*"])
    assert not (project.path / "b.json").exists()


def test_regression_items_exist_only_with_a_baseline_and_are_selectable(
        project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good, extra=EXTRA.replace("thresholds: {acc: 0.0}",
                                                  "thresholds: {acc: 0.0}\n    regression: false"))
    path = write_baseline(project.path / "b.json", {"disteval_baseline": 1, "entries": {}})
    plain = project.runpytest("suites", "--collect-only", "-q")
    assert "regression" not in plain.stdout.str()
    for how in (["-k", "regression"], ["-m", "regression"]):
        result = project.runpytest("suites", "--collect-only", "-q",
                                   f"--disteval-baseline={path}", *how)
        lines = [line for line in result.stdout.lines if "::" in line]
        assert lines == ["suites/regr.yaml::tiny-arith::arith_mc::acc[regression]",
                         "suites/regr.yaml::tiny-arith::arith_mc::acc_norm[regression]",
                         "suites/regr.yaml::tiny-arith::arith_gen::"
                         "exact_match,strict-match[regression]"]
    # a threshold's node id selects its regression item beside it
    both = project.runpytest("--collect-only", "-q", f"--disteval-baseline={path}",
                             "suites/regr.yaml::tiny-arith::arith_mc::acc")
    assert [line for line in both.stdout.lines if "::" in line] == [
        "suites/regr.yaml::tiny-arith::arith_mc::acc",
        "suites/regr.yaml::tiny-arith::arith_mc::acc[regression]"]


def test_bad_regression_keys_are_suite_errors(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "bad", "disteval: 1\ninclude: [tasks]\ndefaults:\n"
                "  regression: {abs: -1}\nmodels:\n" + model_block("m", demo.good) + """\
tasks:
  - task: arith_mc
    thresholds: {acc: 0.5}
    regression:
      accc: {abs: 0.01}
      acc_norm: {absolute: 0.01}
  - task: arith_gen
    thresholds: {"exact_match,strict-match": 0.5}
    regression: 0.01
""")
    result = project.runpytest("suites", "--collect-only")
    result.stdout.fnmatch_lines([
        "suites/bad.yaml:4: defaults.regression.abs: -1 is not valid: a finite number >= 0",
        "suites/bad.yaml:15: tasks[0].regression.accc: the task does not produce metric 'accc' "
        "(did you mean 'acc'?); it produces: acc, acc_norm",
        "suites/bad.yaml:16: tasks[0].regression.acc_norm.absolute: unknown key; valid keys "
        "here: abs, rel",
        "suites/bad.yaml:19: tasks[1].regression: must be false or a mapping metric -> "
        "tolerance, e.g. {acc: {abs: 0.01}, acc_norm: {rel: 0.02}, exact_match: {}}",
    ])
