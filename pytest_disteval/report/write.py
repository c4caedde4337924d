"""Writing the reports a session asked for, at its end (the xdist controller's end)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_disteval.report import html_report as report_html
from pytest_disteval.report import json_report as report_json
from pytest_disteval.report import md_report as report_md
from pytest_disteval.report.run import RunRecorder, inventory_gpus
from pytest_disteval.settings import Settings


def write_reports(recorder: RunRecorder, settings: Settings, scheduler: Any,
                  exit_status: int) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Build the run report and write JSON, markdown and HTML; returns what was written."""
    options = settings.reports
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not recorder.items and not (options.json_asked or options.md_path
                                   or options.html_path):
        return None, []  # no suite ran (a plain test session): leave no files behind
    gpus, source = inventory_gpus(scheduler)
    report = recorder.build(exit_status, gpus, source, settings.store_dir)
    written: list[tuple[str, str]] = []
    if options.json_path is not None and (recorder.items or options.json_asked):
        report_json.write(options.json_path, report)
        written.append(("JSON", str(options.json_path)))
    if options.md_path is not None:
        report_md.write(options.md_path, report)
        written.append(("markdown", str(options.md_path)))
    if summary and recorder.items:
        # appended, never overwritten: other steps of the job write there too
        report_md.write(Path(summary), report, append=True)
    if options.html_path is not None:
        report_html.write(options.html_path, report)
        written.append(("HTML", str(options.html_path)))
    return report, written
