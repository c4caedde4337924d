"""Rendering and options of the reports, without running a model (fast)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.report import html_report as report_html
from pytest_disteval.report import md_report as report_md
from pytest_disteval.report.live import status
from pytest_disteval.report.run import SCHEMA_VERSION
from pytest_disteval.report.terminal import render_jobs


def item(nodeid: str, outcome: str, **props: Any) -> dict[str, Any]:
    return {"nodeid": nodeid, "kind": props["kind"], "outcome": outcome,
            "verdict": props.get("verdict"), "model": props.get("model"),
            "job": nodeid.split("::")[0] + "::" + props["model"], "duration_s": 0.1,
            "properties": props, "failure": props.pop("failure", None), "skip_reason": None}


def report() -> dict[str, Any]:
    """A run report as the contracts describe it, regressions and a hostile text included."""
    evil = "<script>alert_called = 1</script><script>alert(1)</script> | a&b"
    items = [
        item("s.yaml::m::t::acc", "failed", kind="regression", model="m", backend="hf",
             task="t", metric="acc,none", score=0.61, stderr=0.02, baseline_score=0.70,
             baseline_stderr=0.02, delta=-0.09, test="two-proportion z", p_value=0.001,
             alpha=0.05, flipped_worse=12, flipped_better=3, baseline_hardware="H100",
             hardware="H200", bound="acc >= baseline - 2σ | <b>", verdict="fail",
             failure=f"regressed {evil}"),
        item("s.yaml::m::t::acc_norm", "passed", kind="threshold", model="m", backend="hf",
             task="t", metric="acc_norm,none", score=0.8, stderr=0.03, n_samples=100,
             bound="acc_norm >= 0.5000", margin=0.3, verdict="pass"),
        item("s.yaml::m::tokens_per_s", "passed", kind="budget", model="m", backend="hf",
             budget="tokens_per_s", measured=1234.5, unit="tok/s", bound=1000.0,
             verdict="pass"),
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "pytest-disteval", "version": "0.1.0", "lm_eval_version": "0.4.13",
                      "pytest_version": "9", "python_version": "3.11"},
        "started_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:01:00+00:00",
        "args": ["suites", evil], "rootdir": "/r", "exit_status": 1,
        "exit_status_name": "tests_failed",
        "summary": {"items": 3, "passed": 2, "failed": 1, "skipped": 0, "verdict": "fail"},
        "machine": {"host": "h<1>", "platform": "linux", "python": "py", "cpu_count": 2,
                    "gpu_inventory": None, "gpus": []},
        "jobs": [{"id": "s.yaml::m", "suite": "s.yaml", "model": "m", "backend": "hf",
                  "results_path": None, "results": None,
                  "items": {"passed": 2, "failed": 1, "skipped": 0},
                  "job": {"layout": {"tp": 2, "pp": 1, "dp": 2, "pack": 1}, "device": "cuda",
                          "gpus": [{"index": i, "uuid": f"u{i}", "name": "H200",
                                    "memory_total_bytes": 141 * 2**30} for i in range(4)],
                          "groups": [[0, 1], [2, 3]], "wall_s": 61.25, "load_s": 9.5,
                          "requests_per_s": 12.34, "tokens_per_s": 4567.0,
                          "host_peak_rss_bytes": 3 * 2**30, "cached": False,
                          "gpu": {"per_device": {}, "group_peak_mem_bytes": 40 * 2**30,
                                  "mean_util_pct": 80.0, "timelines": [],
                                  "imbalance": None}}}],
        "items": items,
    }


def test_contract_report_validates_against_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from pytest_disteval.report.json_report import schema

    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(report(), schema())
    broken = report()
    broken["items"][0]["outcome"] = "exploded"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema())


def test_job_table_shows_layout_gpus_and_throughput() -> None:
    header, _, row = render_jobs(report()["jobs"])
    cells = row.split("  ")
    assert header.split()[:4] == ["model", "backend", "layout", "GPUs"]
    assert "tp2 pp1 dp2" in row and "0,1,2,3 (H200)" in row
    assert "61.2s" in row and "12.3" in row and "4567" in row
    assert "40.00 GiB" in row and "3.00 GiB" in row and cells[-1].strip() == "no"


def test_markdown_escapes_cells_and_shows_the_baseline_delta() -> None:
    text = report_md.render(report())
    rows = [line for line in text.splitlines() if line.startswith("| ❌")]
    assert len(rows) == 1 and "Δ -0.0900 vs 0.7000 (p=0.001)" in rows[0]
    assert "1234.50 tok/s" in text
    # a pipe in a text would end its cell: escaped, so the row keeps its 8 cells
    assert "2σ \\| <b>" in rows[0] and len(re.split(r"(?<!\\)\|", rows[0])) == 10
    assert "regressed <script>" in text.split("```")[1]  # verbatim inside the code block
    assert text.index("### Failures") < text.index("### Items") < text.index("### Jobs")


def test_html_escapes_everything_from_outside() -> None:
    page = report_html.render(report())
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # the report's own, at the end
    assert 'id="baselines"' in page and "-0.0900" in page and "12 / 3" in page
    assert "http://" not in page.replace('http://www.w3.org/2000/svg"', "") \
        and "https://" not in page  # nothing fetched
    # failing items first, whatever order they came in
    first_row = page.split('<tbody>')[1].split("</tr>")[0]
    assert 'data-outcome="failed"' in first_row


def test_progress_status_line() -> None:
    assert status(0, 2, 0, 0, 0, None, 10.0) == "[disteval] jobs 0/2 · loading"
    line = status(1, 2, 2, 50, 100, 0.0, 10.0)
    assert line == "[disteval] jobs 1/2 · 2 workers · requests 50/100 · ETA 10s"
    assert "ETA" not in status(1, 2, 1, 2, 100, 0.0, 10.0)  # too few done to tell
    assert (status(0, 1, 3, 0, 9, None, 1.0, shards=3)
            == "[disteval] jobs 0/1 · 3 shards · requests 0/9")


def test_progress_counts_this_sessions_workers(tmp_path: Path) -> None:
    import os

    from pytest_disteval.report.live import read_counts
    from pytest_disteval.worker.progress import ProgressCounter

    old = tmp_path / "job-old" / "progress-1.json"
    old.parent.mkdir()
    old.write_text('{"done": 5, "total": 5, "started": 1.0}')
    os.utime(old, (1.0, 1.0))  # an earlier session's
    direct = tmp_path / "job-a"
    shard = tmp_path / "job-b"
    for d in (direct, shard):
        d.mkdir()
    (shard / "spec-shard0.json").write_text("{}")
    counters = [ProgressCounter(direct / "progress-2.json"),
                ProgressCounter(shard / "progress-3.json"),
                ProgressCounter(shard / "progress-4.json")]
    for counter, (done, total) in zip(counters, ((10, 10), (3, 8), (0, 8)), strict=True):
        counter.total, counter.done = total, done
        counter.write()
    running, shards, done, total, first = read_counts(tmp_path, since=100.0)
    assert (running, shards, done, total) == (2, 2, 13, 26)
    assert first == min(c.started for c in counters)


def test_report_options_resolve_and_reject_bad_values(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndisteval_html = out/r.html\n")
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    result = pytester.runpytest("--disteval-progress=sometimes")
    result.stderr.fnmatch_lines(["*--disteval-progress: 'sometimes' is not valid: auto, on or "
                                 "off*"])
    # a session without suites leaves no JSON report behind, only what was asked for
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / ".disteval" / "report.json").exists()
    page = pytester.path / "out" / "r.html"  # the ini path, relative to the rootdir
    assert page.exists() and "0 passed" in page.read_text(encoding="utf-8")
    result = pytester.runpytest("-p", "no:cacheprovider", "--disteval-json=r.json",
                                "-o", "disteval_html=off")
    data = json.loads(Path(pytester.path / "r.json").read_text(encoding="utf-8"))
    assert data["items"] == [] and data["exit_status"] == 0


def test_bars_place_value_bound_and_baseline() -> None:
    regression, threshold, budget = report()["items"]
    svg = report_html.bar(threshold)  # 0.8 ± 0.03 against >= 0.5, on a [0, 1.05] scale
    width = re.search(r'class="value" x="0" y="4" width="([\d.]+)"', svg)
    bound = re.search(r'class="bound" x1="([\d.]+)"', svg)
    assert width and bound and float(bound.group(1)) < float(width.group(1))
    assert 'class="whisker"' in svg
    assert 'class="baseline"' in report_html.bar(regression)
    # a throughput budget: 1234.5 tok/s measured, at least 1000 required
    svg = report_html.bar(budget)
    width = re.search(r'class="value" x="0" y="4" width="([\d.]+)"', svg)
    bound = re.search(r'class="bound" x1="([\d.]+)"', svg)
    assert width and bound and float(bound.group(1)) < float(width.group(1))
    missing = dict(threshold, properties=dict(threshold["properties"], score=None))
    assert report_html.bar(missing) == ""


def test_the_job_records_gpu_section_from_two_timelines(tmp_path: Path) -> None:
    from pytest_disteval.jobs.record import gpu_section

    timelines = []
    for name, gpus in (("a", {"0": ([10, 30], [1, 5])}), ("b", {"1": ([50, 70], [2, 3])})):
        path = tmp_path / f"gpu-{name}.json"
        path.write_text(json.dumps({"period_s": 0.5, "t": [0, 0.5], "unavailable": None,
                                    "gpus": {k: {"util_pct": u, "mem_used_bytes": m}
                                             for k, (u, m) in gpus.items()}}))
        timelines.append(path)
    use, reason = gpu_section(timelines)
    assert use is not None and reason is None
    assert use["per_device"] == {"0": {"mean_util_pct": 20.0, "peak_mem_bytes": 5},
                                 "1": {"mean_util_pct": 60.0, "peak_mem_bytes": 3}}
    assert use["group_peak_mem_bytes"] == 5 and use["mean_util_pct"] == 40.0
    assert gpu_section([tmp_path / "missing.json"])[0] is None
