"""The markdown summary: verdict, failures first, the item table and the job table.

Written with ``--disteval-md PATH`` and appended to ``$GITHUB_STEP_SUMMARY`` when
that is set, so a GitHub Actions run shows it on the run's page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_disteval.report.terminal import JOB_HEADER, job_cells

# the suite last: two suites may name a model alike; the first columns stay as the terminal's
ITEM_HEADER = ("result", "model", "task", "metric", "value", "bound", "margin / Δ", "suite")
_RESULT = {"passed": "✅ pass", "failed": "❌ FAIL", "skipped": "⏭ skip"}


def _f(value: Any, digits: int = 4) -> str | None:
    return f"{value:.{digits}f}" if isinstance(value, int | float) \
        and not isinstance(value, bool) else None


def item_cells(item: dict[str, Any]) -> tuple[str, ...]:
    """One item as (result, model, task, metric, value, bound, margin or delta, suite)."""
    p = item["properties"]
    kind = item["kind"]
    if kind == "budget":
        measured = _f(p.get("measured"), 1 if p.get("unit", "s") == "s" else 2)
        value = f"{measured} {p.get('unit', 's')}" if measured is not None else "-"
        task, metric, extra = "(budget)", str(p.get("budget", "")), "-"
    else:
        score = _f(p.get("score"))
        stderr = _f(p.get("stderr")) or "N/A"
        value = f"{score} ± {stderr}" if score is not None else "-"
        task, metric = str(p.get("task", "")), str(p.get("metric", "")).removesuffix(",none")
        if kind == "regression":
            delta = _f(p.get("delta"))
            base = _f(p.get("baseline_score"))
            extra = f"Δ {delta} vs {base}" if delta is not None else "-"
            if p.get("p_value") is not None:
                extra += f" (p={_f(p.get('p_value'), 3)})"
        else:
            extra = _f(p.get("margin")) or "-"
    return (_RESULT.get(item["outcome"], item["outcome"]), str(item.get("model") or "-"),
            task, metric, value, str(p.get("bound", "-")), extra, item_suite(item))


def item_suite(item: dict[str, Any]) -> str:
    """The suite file of an item: the first part of its node id."""
    return str(item["nodeid"]).split("::", 1)[0]


def _cell(text: str) -> str:
    # a pipe ends a cell and a newline a row: neither may come from a model name
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def verdict_line(report: dict[str, Any], *, mark: bool = True) -> str:
    s = report["summary"]
    sign = ("✅ " if s["verdict"] == "pass" else "❌ ") if mark else ""
    parts = [f"{s['passed']} passed", f"{s['failed']} failed"]
    if s["skipped"]:
        parts.append(f"{s['skipped']} skipped")
    return (f"{sign}**disteval: {s['verdict'].upper()}**: {', '.join(parts)} "
            f"({len(report['jobs'])} job{'s' if len(report['jobs']) != 1 else ''}; "
            f"exit status {report['exit_status']} {report['exit_status_name']})")


def render(report: dict[str, Any]) -> str:
    lines = ["## LLM evaluation (pytest-disteval)", "", verdict_line(report), ""]
    failed = [i for i in report["items"] if i["outcome"] == "failed"]
    if failed:
        lines += ["### Failures", ""]
        for item in failed:
            text = (item.get("failure") or "").strip().splitlines()
            lines += [f"<details><summary><code>{_html(item['nodeid'])}</code></summary>", "",
                      "```", *(t.replace("```", "`\u200b``") for t in text[:40]), "```",
                      "", "</details>", ""]
    lines += ["### Items", ""]
    lines += _table(ITEM_HEADER, [item_cells(i) for i in report["items"]])
    lines += ["", "### Jobs", ""]
    lines += _table(JOB_HEADER, [job_cells(j) for j in report["jobs"]])
    lines += ["", f"<sub>pytest-disteval {report['generator']['version']}, lm-eval "
                  f"{report['generator']['lm_eval_version']}, on {_html(report['machine']['host'])}"
                  f", {report['finished_at']}</sub>", ""]
    return "\n".join(lines)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write(path: Path, report: dict[str, Any], *, append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(report)
    if append:
        with path.open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
    else:
        path.write_text(text, encoding="utf-8")
