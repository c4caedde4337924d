"""The reports of a whole run: JSON against its schema, markdown, HTML in a real browser.

One real run of two demo models (one passes, one misses) is shared by the tests
of this module; an xdist run reuses its store, so it runs no model again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, find_chromium
from test_report_render import report as contract_report

from conftest import DEMO_MODELS, ROOT, SUITES
from helpers import model_block

SUITE = ("disteval: 1\ninclude: [tasks]\nmodels:\n"
         + model_block("good", DEMO_MODELS / "tiny-arith", extra="budgets: {wall_time: 10m}\n")
         + model_block("weak", DEMO_MODELS / "tiny-arith-untrained")) + """\
tasks:
  - task: arith_mc
    limit: 40
    thresholds:
      acc: 0.9
  - task: arith_gen
    limit: 40
    thresholds:
      exact_match,strict-match: 0.9
"""

STEP_SUMMARY_BEFORE = "## an earlier step wrote this\n"


@dataclass(frozen=True)
class Run:
    dir: Path
    result: subprocess.CompletedProcess[str]
    json_path: Path
    md_path: Path
    html_path: Path
    step_summary: Path


def run_pytest(cwd: Path, *args: str, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_", "GITHUB_", "DISTEVAL_"))}
    clean["PYTHONPATH"] = str(ROOT)
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=clean, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("reports")
    import shutil

    shutil.copytree(SUITES / "tasks", base / "suites" / "tasks")
    shutil.copytree(SUITES / "data", base / "suites" / "data")
    (base / "suites" / "gate.yaml").write_text(SUITE, encoding="utf-8")
    (base / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    summary = base / "step-summary.md"
    summary.write_text(STEP_SUMMARY_BEFORE, encoding="utf-8")
    result = run_pytest(base, "suites", "--disteval-dir=.disteval", "--disteval-md=out/r.md",
                        "--disteval-html=out/r.html",
                        env={"GITHUB_STEP_SUMMARY": str(summary)})
    return Run(base, result, base / ".disteval" / "report.json", base / "out" / "r.md",
               base / "out" / "r.html", summary)


def validate(report: dict[str, Any]) -> None:
    import jsonschema

    from pytest_disteval.report.json_report import schema

    validator = jsonschema.Draft202012Validator(
        schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.slow
def test_json_report_of_a_real_run_validates_and_holds_every_job_and_item(run: Run) -> None:
    assert run.result.returncode == 1, run.result.stdout + run.result.stderr
    report = json.loads(run.json_path.read_text(encoding="utf-8"))  # the default place
    validate(report)
    assert report["exit_status"] == 1 and report["exit_status_name"] == "tests_failed"
    assert report["summary"] == {"items": 5, "passed": 3, "failed": 2, "skipped": 0,
                                 "verdict": "fail"}
    assert [i["outcome"] for i in report["items"]][:2] == ["failed", "failed"]
    assert {i["nodeid"] for i in report["items"] if i["outcome"] == "failed"} == {
        "suites/gate.yaml::weak::arith_mc::acc",
        "suites/gate.yaml::weak::arith_gen::exact_match,strict-match"}
    failed = report["items"][0]
    assert "required:" in failed["failure"] and failed["verdict"] == "fail"
    assert failed["properties"]["score"] < 0.9
    jobs = {j["model"]: j for j in report["jobs"]}
    assert set(jobs) == {"good", "weak"}
    record = jobs["good"]["job"]
    assert record["layout"] == {"tp": 1, "pp": 1, "dp": 1, "pack": 1}
    assert record["device"] == "cpu" and record["cached"] is False
    assert record["wall_s"] > 0 and 0 < record["load_s"] < record["wall_s"]
    # lm-eval's own results ride along, as the results file has them
    assert jobs["good"]["results"]["results"]["arith_mc"]["acc,none"] == 1.0
    assert jobs["good"]["items"] == {"passed": 3, "failed": 0, "skipped": 0}
    assert report["args"][2:3] == ["suites"] and report["generator"]["lm_eval_version"]


@pytest.mark.slow
def test_terminal_shows_the_job_table_and_where_the_reports_went(run: Run) -> None:
    out = run.result.stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model  backend"))
    assert "layout" in lines[header] and "host RSS" in lines[header]
    rows = {line.split()[0]: line for line in lines[header + 2:header + 4]}
    assert set(rows) == {"good", "weak"}
    assert "tp1 pp1 dp1" in rows["good"] and " cpu " in rows["good"]
    assert f"disteval HTML report: {run.html_path}" in out
    # stdout is a pipe here: no live progress, no escape sequences
    assert "[disteval] jobs" not in out and "\x1b" not in out


@pytest.mark.slow
def test_markdown_summary_is_written_and_appended_to_the_github_step_summary(run: Run) -> None:
    text = run.md_path.read_text(encoding="utf-8")
    summary = run.step_summary.read_text(encoding="utf-8")
    assert summary.startswith(STEP_SUMMARY_BEFORE)  # appended, not overwritten
    assert summary[len(STEP_SUMMARY_BEFORE):].strip() == text.strip()
    assert "❌ **disteval: FAIL**: 3 passed, 2 failed (2 jobs; exit status 1 tests_failed)" in text
    sections = [line for line in text.splitlines() if line.startswith("### ")]
    assert sections == ["### Failures", "### Items", "### Jobs"]
    items = [line for line in text.split("### Items")[1].split("### Jobs")[0].splitlines()
             if line.startswith("| ") and not line.startswith("| result")]
    assert len(items) == 5
    assert all("FAIL" in row for row in items[:2]) and all("pass" in row for row in items[2:])
    # a pipe inside a cell would split it: metric names never do
    assert all(row.count(" | ") == 7 for row in items)
    assert "| good | hf | tp1 pp1 dp1 | cpu |" in text


@pytest.mark.slow
def test_json_report_with_xdist_validates_and_has_the_same_items(run: Run) -> None:
    # the first run's store answers: no model runs, only the controller's report is tested
    out = run.dir / "xdist.json"
    result = run_pytest(run.dir, "suites", "-n", "2", "-p", "xdist", "--disteval-dir=.disteval",
                        f"--disteval-json={out}")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    validate(report)
    first = json.loads(run.json_path.read_text(encoding="utf-8"))
    assert ({(i["nodeid"], i["outcome"]) for i in report["items"]}
            == {(i["nodeid"], i["outcome"]) for i in first["items"]})
    assert {j["model"]: j["job"]["cached"] for j in report["jobs"]} == {"good": True,
                                                                         "weak": True}
    assert all(j["job"]["wall_s"] for j in report["jobs"])  # the recorded wall time


def _with_gpu_timeline(report: dict[str, Any], where: Path) -> dict[str, Any]:
    """The run report as a GPU run would leave it: a timeline in GpuSampler's format."""
    timeline = where / "gpu-good-0.json"
    t = [0.5 * i for i in range(40)]
    timeline.write_text(json.dumps({
        "period_s": 0.5, "t": t, "unavailable": None,
        "gpus": {"0": {"util_pct": [min(100, 5 * i) for i in range(40)],
                       "mem_used_bytes": [2**30 * (1 + i / 10) for i in range(40)]},
                 "1": {"util_pct": [min(100, 3 * i) for i in range(40)],
                       "mem_used_bytes": [2**30 * (1 + i / 20) for i in range(40)]}}}))
    report = json.loads(json.dumps(report))
    job = next(j for j in report["jobs"] if j["model"] == "good")
    job["job"].update({
        "device": "cuda", "groups": [[0, 1]], "layout": {"tp": 2, "pp": 1, "dp": 1, "pack": 1},
        "gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "H100 <80GB>",
                  "memory_total_bytes": 80 * 2**30} for i in (0, 1)],
        "gpu": {"per_device": {"0": {"mean_util_pct": 60.0, "peak_mem_bytes": 5 * 2**30}},
                "group_peak_mem_bytes": 5 * 2**30, "mean_util_pct": 60.0,
                "timelines": [str(timeline)], "imbalance": None}})
    validate(report)
    return report


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_html_report_in_a_headless_browser(run: Run, tmp_path: Path) -> None:
    pytest.importorskip("websocket", reason="needs websocket-client to drive Chromium")
    from pytest_disteval.report import html_report as report_html

    report = json.loads(run.json_path.read_text(encoding="utf-8"))
    gpu_page = tmp_path / "gpu.html"
    gpu_page.write_text(report_html.render(_with_gpu_timeline(report, tmp_path)),
                        encoding="utf-8")
    chromium = find_chromium()
    assert chromium is not None
    with Browser(chromium) as browser:
        # the checks below can fail: a broken page is caught
        broken = browser.load("data:text/html,<script>console.error('x');nope()</script>")
        assert broken.console_errors and broken.exceptions

        problems = browser.load(run.html_path.as_uri())
        assert problems.console_errors == [] and problems.exceptions == []
        assert problems.failed_requests == []
        assert problems.requests == [run.html_path.as_uri()]  # nothing else is fetched
        assert browser.evaluate("document.body.dataset.ready") == "1"  # the script ran
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('#items tbody tr:not(.detail)'))"
            ".map(r => [r.dataset.outcome, r.dataset.nodeid])")
        assert [outcome for outcome, _ in rows] == ["failed"] * 2 + ["passed"] * 3
        assert rows[0][1].startswith("suites/gate.yaml::weak::")
        # a bar per threshold and budget, a stderr whisker where the stderr is not 0
        assert browser.evaluate("document.querySelectorAll('#items svg.bar').length") == 5
        assert browser.evaluate("document.querySelectorAll('#items line.bound').length") == 5
        assert browser.evaluate("document.querySelectorAll('#items .whisker').length") >= 1
        # the failure text is shown as text: its '>=' is not markup
        assert "required: acc >= 0.9000" in browser.evaluate(
            "document.querySelector('#items tr.detail pre').textContent")
        # the filter hides passing rows
        visible = browser.evaluate(
            "document.getElementById('only-failed').click();"
            "Array.from(document.querySelectorAll('#items tbody tr'))"
            ".filter(r => r.offsetParent !== null).map(r => r.dataset.outcome)")
        assert set(visible) == {"failed"}

        problems = browser.load(gpu_page.as_uri())
        assert problems.console_errors == [] and problems.exceptions == []
        charts = browser.evaluate(
            "Array.from(document.querySelectorAll('svg.timeline')).map(s => "
            "[s.querySelector('title').textContent, s.querySelectorAll('polyline').length])")
        assert charts == [["good-0: GPU utilisation", 2],
                          ["good-0: GPU memory (of 80 GiB per GPU)", 2]]
        assert "0,1 (H100 <80GB>)" in browser.evaluate(
            "document.querySelector('#jobs').textContent")

        # regression items (the contract's properties) and hostile text
        page = tmp_path / "contract.html"
        page.write_text(report_html.render(contract_report()), encoding="utf-8")
        problems = browser.load(page.as_uri())
        assert problems.console_errors == [] and problems.exceptions == []
        assert browser.evaluate("typeof alert_called") == "undefined"
        assert browser.evaluate("document.querySelectorAll('#baselines tbody tr').length") == 1
        assert browser.evaluate("document.querySelectorAll('#items circle.baseline').length") == 1
        assert "<script>alert(1)</script>" in browser.evaluate(
            "document.querySelector('#items tr.detail pre').textContent")


def run_in_pty(cwd: Path, *args: str) -> tuple[int, str]:
    """pytest with a pseudo-terminal as stdout and stderr, as a person's shell gives it."""
    import pty
    import select

    master, slave = pty.openpty()
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_", "GITHUB_", "DISTEVAL_"))}
    clean.update(PYTHONPATH=str(ROOT), COLUMNS="160", LINES="50", TERM="xterm")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                            cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=clean)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=600)
    finally:
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


@pytest.mark.slow
def test_live_progress_on_a_tty_is_drawn_in_place_and_erased(tmp_path: Path) -> None:
    import re
    import shutil

    shutil.copytree(SUITES / "tasks", tmp_path / "suites" / "tasks")
    shutil.copytree(SUITES / "data", tmp_path / "suites" / "data")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "suites" / "one.yaml").write_text(f"""\
disteval: 1
include: [tasks]
models:
  - name: weak
    backend: hf
    model_args: {{pretrained: {DEMO_MODELS / "tiny-arith-untrained"}, dtype: float32}}
    device: cpu
    batch_size: 8
tasks:
  - task: arith_mc
    limit: 10
    thresholds:
      acc: 0.0
""", encoding="utf-8")
    code, out = run_in_pty(tmp_path, "suites", "--disteval-no-cache",
                           f"--disteval-dir={tmp_path / 'd'}", "--color=no")
    assert code == 0, out
    # drawn: saved cursor, a status, then redrawn in place and erased at the end
    drawn = re.findall(r"\x1b7 (\[disteval\] [^\x1b]*)", out)
    assert drawn and drawn[0].startswith("[disteval] jobs 0/1"), out
    statuses = re.findall(r"\[disteval\] [^\x1b]*", out)
    assert any(re.search(r"requests \d+/40\b", s) for s in statuses), statuses
    # with the drawing taken out, pytest's own line is what it always is
    plain = re.sub(r"\x1b7 \[disteval\][^\x1b]*(?:\x1b8\x1b\[K(?: \[disteval\][^\x1b]*)?)*",
                   "", out)
    assert "\x1b" not in plain and "[disteval] jobs" not in plain, plain
    assert re.search(r"^suites/one\.yaml \. +\[100%\]\r?$", plain, flags=re.M), plain
