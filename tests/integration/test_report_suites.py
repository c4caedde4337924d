"""Reports name each item's suite, draw the baseline ring's legend only beside a baseline,
and give every job that has results its record, also when a -k run reads the store."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pytest_disteval.report import html_report, md_report
from pytest_disteval.report.terminal import SummaryTable

from conftest import Demo
from helpers import good_model_suite


def _item(nodeid: str, **props: Any) -> dict[str, Any]:
    props = {"kind": "threshold", "model": "m", "backend": "hf", "task": "t",
             "metric": "acc,none", "score": 0.8, "stderr": 0.03, "n_samples": 100,
             "bound": "acc >= 0.5000", "margin": 0.3, "verdict": "pass", **props}
    return {"nodeid": nodeid, "kind": props["kind"], "outcome": "passed", "verdict": "pass",
            "model": "m", "job": nodeid.rsplit("::", 2)[0], "duration_s": 0.1,
            "properties": props, "failure": None, "skip_reason": None}


def _report(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"generator": {"version": "0.1.0", "lm_eval_version": "0.4.13",
                          "pytest_version": "9"},
            "started_at": "s", "finished_at": "f", "args": [], "exit_status": 0,
            "exit_status_name": "ok",
            "summary": {"items": len(items), "passed": len(items), "failed": 0, "skipped": 0,
                        "verdict": "pass"},
            "machine": {"host": "h"}, "jobs": [], "items": items}


# two suites, one model name: only the suite tells their rows apart
TWO_SUITES = [_item("suites/nightly.yaml::m::t::acc"), _item("suites/smoke.yaml::m::t::acc")]


def test_the_items_tables_have_a_suite_column() -> None:
    md = md_report.render(_report(TWO_SUITES))
    items = md.split("### Items")[1].split("### Jobs")[0]
    rows = [line for line in items.splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| margin / Δ | suite |")
    assert [row.rsplit("|", 2)[1].strip() for row in rows[1:]] == [
        "suites/nightly.yaml", "suites/smoke.yaml"]

    page = html_report.render(_report(TWO_SUITES))
    table = page.split('id="items"')[1].split("</table>")[0]
    assert "<th>suite</th>" in table
    assert re.findall(r"<td[^>]*>(suites/[a-z]+\.yaml)</td>", table) == [
        "suites/nightly.yaml", "suites/smoke.yaml"]

    terminal = SummaryTable([dict(i["properties"], nodeid=i["nodeid"], outcome="passed")
                             for i in TWO_SUITES]).render()
    assert terminal[0].split()[-1] == "suite"
    assert [line.split()[-1] for line in terminal[2:4]] == [
        "suites/nightly.yaml", "suites/smoke.yaml"]


def test_the_html_legend_shows_the_baseline_ring_only_with_a_baseline() -> None:
    def legend(items: list[dict[str, Any]]) -> str:
        page = html_report.render(_report(items))
        return page.split('<p class="legend">')[1].split("</p>")[0]

    plain = legend(TWO_SUITES)
    assert "ring" not in plain and "<circle" not in plain and "dashed line: the bound" in plain
    compared = legend([_item("s.yaml::m::t::acc", kind="regression", baseline_score=0.7,
                             delta=0.1)])
    assert "ring: the baseline" in compared and "<circle" in compared


@pytest.mark.slow
def test_a_cached_k_run_reports_the_stored_job_record(project: pytest.Pytester,
                                                      demo: Demo) -> None:
    good_model_suite(project, "s", demo.good, """\
tasks:
  - task: arith_mc
    limit: 20
    thresholds: {acc: 0.5, acc_norm: 0.5}
  - task: arith_gen
    limit: 10
    thresholds:
      exact_match,strict-match: 0.5
""")
    base = project.path / ".disteval"
    project.runpytest("suites", f"--disteval-dir={base}", "--disteval-json=full.json"
                      ).assert_outcomes(passed=3)
    ran = json.loads((project.path / "full.json").read_text())["jobs"][0]["job"]
    assert ran["cached"] is False
    # one entry of two, from the store: its results file has no record of its own
    project.runpytest("suites", f"--disteval-dir={base}", "--disteval-json=k.json",
                      "-k", "arith_mc and acc_norm").assert_outcomes(passed=1)
    job = json.loads((project.path / "k.json").read_text())["jobs"][0]
    assert job["results_path"] is not None
    assert job["job"] is not None, "job: null beside a results path"
    assert job["job"]["cached"] is True
    assert job["job"]["wall_s"] == ran["wall_s"]
    assert set(job["job"]["tasks"]) == {"arith_mc", "arith_gen"}
