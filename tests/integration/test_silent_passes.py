"""Gates that never pass silently: a suite without its marker, a file that is not a suite,
a threshold no score can reach, a plan that cannot be laid out; and a plan that shows
what really runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import load_suite

from conftest import Demo
from helpers import model_block, plan_suite, write_suite

TASKS = """\
tasks:
  - task: arith_mc
    thresholds: {acc: 0.5}
"""


def _errors(xml: Path) -> dict[str, str]:
    """JUnit: the collection errors, by file (the testcase's name: its path, dotted)."""
    return {case.get("name", ""): error.text or ""
            for case in ET.parse(xml).iter("testcase") for error in case.iter("error")}


def test_a_suite_without_its_marker_is_a_collection_error_not_skipped(
        project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "good", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + TASKS)
    write_suite(project, "typo", "diseval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + TASKS)
    # per-model tasks, no top-level tasks: the near miss of the marker is enough
    write_suite(project, "typo2", "distevel: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("m", demo.good, extra=TASKS))
    result = project.runpytest("suites", "--collect-only", "-q", "--junitxml=out.xml")
    errors = _errors(project.path / "out.xml")
    assert sorted(errors) == ["suites.typo.yaml", "suites.typo2.yaml"]
    assert "suites/typo.yaml:1: disteval: missing: a suite says 'disteval: 1'" in errors[
        "suites.typo.yaml"]
    assert ("suites/typo.yaml:1: diseval: unknown key (did you mean 'disteval'?)"
            in errors["suites.typo.yaml"])
    assert "distevel: unknown key (did you mean 'disteval'?)" in errors["suites.typo2.yaml"]
    # the good suite still collects, and the run does not pass
    result.stdout.fnmatch_lines(["suites/good.yaml::good::arith_mc::acc*"])
    assert result.ret != 0
    # the demo's lm-eval task files under suites/ are no suites, and no errors either
    assert not any("tasks" in name for name in errors)


def test_a_yaml_file_named_on_the_command_line_says_why_it_is_not_a_suite(
        project: pytest.Pytester) -> None:
    (project.path / "notes.yaml").write_text("owner: me\nmodels: many\n")
    result = project.runpytest("notes.yaml", "suites/tasks/arith_mc.yaml",
                               "--junitxml=out.xml")
    errors = _errors(project.path / "out.xml")
    assert "notes.yaml:1: not a disteval suite; a suite file has a top-level 'disteval: 1'" \
        in errors["notes.yaml"]
    assert "arith_mc.yaml:1: an lm-eval task file: name its task in a suite's 'tasks'" in \
        errors["suites.tasks.arith_mc.yaml"]
    assert "not found" not in result.stdout.str() + result.stderr.str()
    assert result.ret != 0


def test_a_threshold_outside_a_bounded_metric_range_is_an_error(
        project: pytest.Pytester, demo: Demo) -> None:
    path = write_suite(project, "s", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                       + model_block("m", demo.good) + """\
tasks:
  - task: arith_mc
    thresholds:
      acc: 10
      acc_norm: {max: 1.5, min: 0.2}
  - task: arith_gen
    thresholds:
      exact_match,strict-match: {min: -0.5}
  - task: arc_easy
    thresholds:
      acc: 0.4
      mcc: 1.2
      brier_score: {max: 1.5}
""")
    with pytest.raises(SuiteError) as excinfo:
        load_suite(path)
    problems = {(line, key): message for line, key, message in excinfo.value.problems}
    assert problems == {
        (12, "tasks[0].thresholds.acc"): "min 10 is outside the range of acc, [0, 1]: the item "
                                        "could never pass; for 10% write 0.1",
        (13, "tasks[0].thresholds.acc_norm"): "max 1.5 is outside the range of acc_norm, "
                                              "[0, 1]: the item could never fail",
        (16, "tasks[1].thresholds.exact_match,strict-match"):
            "min -0.5 is outside the range of exact_match, [0, 1]: the item could never fail",
        (20, "tasks[2].thresholds.mcc"): "min 1.2 is outside the range of mcc, [-1, 1]: the "
                                         "item could never pass",
    }  # brier_score: lm-eval does not fix its range; no guess
    assert str(path) in str(excinfo.value).splitlines()[0]


def test_a_plan_that_cannot_be_laid_out_exits_non_zero(project: pytest.Pytester,
                                                       demo: Demo) -> None:
    plan_suite(project, demo.good, "vllm")
    fits = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB", "--tp", "2")
    assert fits.ret == pytest.ExitCode.OK
    refused = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB",
                                "--tp", "3")
    refused.stdout.fnmatch_lines(["  cannot lay out: tp=3 does not divide*"])
    assert refused.ret == pytest.ExitCode.TESTS_FAILED


def test_the_fake_gpu_plan_of_a_cpu_model_shows_what_its_workers_get(
        project: pytest.Pytester, demo: Demo) -> None:
    plan_suite(project, demo.good, model_keys="device: cpu")
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB",
                               "--tp", "4")
    result.stdout.fnmatch_lines([
        "job suites/plan.yaml::m  backend=hf  tp=4 pp=1 dp=2",
        "  device: cpu: each worker runs the whole model on the CPU with the model_args below;*",
        f"  model_args: pretrained={demo.good},dtype=float32",
    ])
    assert "parallelize" not in result.stdout.str()
    # a model for GPUs: the plan shows what real GPUs would get
    plan_suite(project, demo.good)
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB",
                               "--tp", "4")
    result.stdout.fnmatch_lines([f"  model_args: pretrained={demo.good},dtype=float32,"
                                 "parallelize=True"])
