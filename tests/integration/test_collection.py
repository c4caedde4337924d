"""Collection: node ids, markers, keywords, and that it stays light (no torch, no lm-eval)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, Demo
from helpers import model_block, write_suite

SUITE = """\
disteval: 1
include: [tasks]
marks: [nightly]
models:
{good}{weak}tasks:
  - task: arith_mc
    thresholds: {{acc: 0.9}}
  - task: arith_gen
    name: arith_gen-3shot
    num_fewshot: 3
    thresholds:
      exact_match,strict-match: 0.9
"""


def suite(project: pytest.Pytester, demo: Demo) -> None:
    project.makeini("[pytest]\nmarkers =\n    nightly: nightly runs\n")
    write_suite(project, "smoke", SUITE.format(
        good=model_block("good", demo.good, extra="budgets: {wall_time: 5m}\n"),
        weak=model_block("weak", demo.weak)))


def test_node_ids_are_stable_and_readable(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo)
    result = project.runpytest("--collect-only", "-q", "suites")
    result.stdout.fnmatch_lines([
        "suites/smoke.yaml::good::arith_mc::acc",
        "suites/smoke.yaml::good::arith_gen-3shot::exact_match,strict-match",
        "suites/smoke.yaml::good::wall_time",
        "suites/smoke.yaml::weak::arith_mc::acc",
        "suites/smoke.yaml::weak::arith_gen-3shot::exact_match,strict-match",
        "5 tests collected*",
    ])


@pytest.mark.parametrize(("args", "selected"), [
    (["-k", "arith_mc"], ["good::arith_mc::acc", "weak::arith_mc::acc"]),
    (["-k", "weak and not arith_mc"], ["weak::arith_gen-3shot::exact_match,strict-match"]),
    (["-m", "disteval(model='good') and threshold"],
     ["good::arith_mc::acc", "good::arith_gen-3shot::exact_match,strict-match"]),
    (["-m", "budget"], ["good::wall_time"]),
    (["-m", "disteval(task='arith_gen')"],
     ["good::arith_gen-3shot::exact_match,strict-match",
      "weak::arith_gen-3shot::exact_match,strict-match"]),
    (["-m", "nightly and disteval(metric='acc,none')"],
     ["good::arith_mc::acc", "weak::arith_mc::acc"]),
])
def test_selection_by_keyword_and_marker(project: pytest.Pytester, demo: Demo,
                                         args: list[str], selected: list[str]) -> None:
    suite(project, demo)
    result = project.runpytest("--collect-only", "-q", "suites", *args)
    ids = [line.split("::", 1)[1] for line in result.outlines if line.startswith("suites/")]
    assert ids == selected


def test_collection_imports_neither_torch_nor_lm_eval(project: pytest.Pytester,
                                                      demo: Demo) -> None:
    suite(project, demo)
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['--collect-only', '-q', 'suites'])\n"
        "heavy = sorted(m for m in ('torch', 'lm_eval', 'transformers', 'datasets', 'pynvml')"
        " if m in sys.modules)\n"
        "print('HEAVY:', heavy)\n"
        "sys.exit(rc)\n"
    )
    result = project.run(sys.executable, "-c", code)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["5 tests collected*", "HEAVY: []"])


def test_the_chat_check_reads_no_transformers() -> None:
    # the chat-template check runs at collection for CPU runs: files only, no imports
    code = ("import sys, pytest_disteval.preflight.chat, pytest_disteval.plugin; "
            "print([m for m in ('transformers', 'torch', 'lm_eval') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_options_are_in_the_disteval_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "LLM evaluation suites (pytest-disteval):",
        "*--disteval-dir=DIR*",
        "*--disteval-no-cache*",
        "*--disteval-timeout=DURATION*",
    ])
    result.stdout.fnmatch_lines(["*disteval_timeout (string):*"])


def test_an_unregistered_mark_is_a_suite_error_and_other_suites_collect(
        project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo)
    write_suite(project, "marked", SUITE.format(good=model_block("good", demo.good),
                                                weak="").replace("nightly", "nightly, gpu_big"))
    result = project.runpytest("--collect-only", "-q", "--strict-markers", "suites")
    result.stdout.fnmatch_lines([
        "*suites/marked.yaml:1: marks: marker 'gpu_big' is not registered; add it to the "
        "'markers' ini option or remove it",
        "5 tests collected, 1 error*",
    ])
