"""The terminal summary: one row per threshold and budget item.

Rows are built from test reports' ``user_properties``, which xdist sends from
workers to the controller, so the table is the same with and without ``-n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_disteval.report.format import JOB_HEADER, job_cells


@dataclass
class SummaryTable:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "kind" not in props or report.when != "call":
            return  # not a suite item, or its setup/teardown
        props["outcome"] = report.outcome
        props["nodeid"] = report.nodeid
        self.rows.append(props)

    def render(self) -> list[str]:
        # the suite last, as in the markdown and HTML: the first columns stay the familiar ones
        header = ("model", "task", "metric", "score ± stderr", "bound", "result", "n", "seconds",
                  "suite")
        table: list[tuple[str, ...]] = []
        for row in self.rows:
            if row["kind"] == "regression":
                # the baseline in the bound column: what the score was compared with, and how
                task, metric, value, bound, seconds = _regression_cells(row)
                table.append((str(row.get("model", "")), task, metric, value, bound,
                              {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
                              [row["outcome"]], str(row.get("n_samples", "") or "-"),
                              (f"{seconds:.1f}" if isinstance(seconds, float | int) else "-")
                              + (" (cached)" if row.get("cached") is True else ""),
                              _suite(row)))
                continue
            if row["kind"] == "threshold":
                score = row.get("score")
                stderr = row.get("stderr")
                if isinstance(score, float):
                    err = f"{stderr:.4f}" if isinstance(stderr, float) else "N/A"
                    value = f"{score:.4f} ± {err}"
                else:
                    value = "-"
                metric = str(row.get("metric", ""))
                task = str(row.get("task", ""))
                seconds = row.get("eval_s")
            else:
                value = _measured(row.get("measured"), str(row.get("unit", "s")))
                metric = str(row.get("budget", ""))
                task = str(row.get("task") or "(budget)")  # task_time: the entry's name
                seconds = row.get("wall_time_s")
            result = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[row["outcome"]]
            timing = f"{seconds:.1f}" if isinstance(seconds, float | int) else "-"
            if row.get("cached") is True:
                timing += " (cached)"
            bound = re.sub(r" \(tolerance (\S+) x stderr = \S+\)", r" (tol \1σ)",
                           str(row.get("bound", "-")))
            n = str(row.get("n_samples", "") or "-")
            if row.get("partial"):
                n += " (limit)"  # a quick look (--disteval-limit or the suite's limit)
            table.append((str(row.get("model", "")), task, metric.removesuffix(",none"), value,
                          bound, result, n, timing, _suite(row)))
        widths = [max(len(header[i]), *(len(r[i]) for r in table)) for i in range(len(header))]
        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        return [line(header), line(tuple("-" * w for w in widths)), *map(line, table),
                *self._small_n_warnings()]

    def _small_n_warnings(self) -> list[str]:
        """One line per task entry scored on few documents (items carry ``limit_note``)."""
        by_task: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row.get("limit_note"):
                by_task.setdefault(f"{row.get('model', '')} {row.get('task', '')}", []).append(row)
        lines = []
        for task, rows in sorted(by_task.items()):
            errors = [r["stderr"] for r in rows if isinstance(r.get("stderr"), float)]
            worst = f"±{max(errors):.4f}" if errors else "N/A"
            lines.append(f"warning: {task}: n={rows[0].get('n_samples')} documents (limit); "
                         f"stderr up to {worst}; thresholds are checked within their tolerance "
                         "(2 x stderr unless the suite set one)")
        return lines


def _suite(row: dict[str, Any]) -> str:
    return str(row.get("nodeid", "")).split("::", 1)[0]


def _measured(value: Any, unit: str) -> str:
    """A budget's measured figure in its unit (the ``unit`` property): 12.8s, 1.2 GiB, 35%."""
    if not isinstance(value, float | int) or isinstance(value, bool):
        return "-"
    if unit == "s":
        return f"{value:.1f}s"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.4g} {unit}"


def _regression_cells(row: dict[str, Any]) -> tuple[str, str, str, str, Any]:
    def pm(score: Any, stderr: Any) -> str:
        if not isinstance(score, float | int):
            return "-"
        return f"{score:.4f} ± " + (f"{stderr:.4f}" if isinstance(stderr, float | int) else "N/A")

    metric = str(row.get("metric", "")).removesuffix(",none") + " [regression]"
    bound = "-"
    if "baseline_score" in row:
        bound = f"baseline {pm(row['baseline_score'], row.get('baseline_stderr'))}"
        if isinstance(row.get("p_value"), float | int):
            bound += f", {row.get('test')} p={row['p_value']:.2g}"
    return (str(row.get("task", "")), metric, pm(row.get("score"), row.get("stderr")), bound,
            row.get("eval_s"))


# -- the job table: one row per job, from the run report's job records ----------


def render_jobs(jobs: list[dict[str, Any]]) -> list[str]:
    table = [job_cells(job) for job in jobs]
    widths = [max(len(JOB_HEADER[i]), *(len(r[i]) for r in table))
              for i in range(len(JOB_HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(JOB_HEADER), line(tuple("-" * w for w in widths)), *map(line, table)]
