"""The run record's items and jobs as table cells, and its verdict line.

Every renderer (terminal, markdown, HTML) reads the run record (run.py) and words
it through these functions, so the tables agree and no renderer imports another.
Each renderer words an item's result itself (emoji, words, capitals): the item
cells here are the columns after it.
"""

from __future__ import annotations

from typing import Any

# the suite last: two suites may name a model alike; the first columns stay as the terminal's
ITEM_HEADER = ("result", "model", "task", "metric", "value", "bound", "margin / Δ", "suite")
JOB_HEADER = ("model", "backend", "layout", "GPUs", "wall", "load", "req/s", "tok/s",
              "peak GPU mem", "host RSS", "cached")


def _f(value: Any, digits: int = 4) -> str | None:
    return f"{value:.{digits}f}" if isinstance(value, int | float) \
        and not isinstance(value, bool) else None


def item_cells(item: dict[str, Any]) -> tuple[str, ...]:
    """One item as (model, task, metric, value, bound, margin or delta, suite): ITEM_HEADER[1:]."""
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
    return (str(item.get("model") or "-"), task, metric, value, str(p.get("bound", "-")), extra,
            item_suite(item))


def item_suite(item: dict[str, Any]) -> str:
    """The suite file of an item: the first part of its node id."""
    return str(item["nodeid"]).split("::", 1)[0]


def verdict_line(report: dict[str, Any], *, mark: bool = True) -> str:
    s = report["summary"]
    sign = ("✅ " if s["verdict"] == "pass" else "❌ ") if mark else ""
    parts = [f"{s['passed']} passed", f"{s['failed']} failed"]
    if s["skipped"]:
        parts.append(f"{s['skipped']} skipped")
    return (f"{sign}**disteval: {s['verdict'].upper()}**: {', '.join(parts)} "
            f"({len(report['jobs'])} job{'s' if len(report['jobs']) != 1 else ''}; "
            f"exit status {report['exit_status']} {report['exit_status_name']})")


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    return f"{value:{fmt}}{suffix}" if isinstance(value, int | float) else "-"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.2f} GiB" if isinstance(value, int | float) else "-"


def job_cells(job: dict[str, Any]) -> tuple[str, ...]:
    """A job of the run report as table cells; ``-`` where nothing was measured."""
    record = job.get("job") or {}
    layout = record.get("layout")
    if layout:
        text = f"tp{layout['tp']} pp{layout['pp']} dp{layout['dp']}"
        if layout.get("pack", 1) > 1:
            text += f" pack{layout['pack']}"
    else:
        text = "-"
    gpus = record.get("gpus") or []
    if gpus:
        names = sorted({g["name"] for g in gpus})
        where = ",".join(str(g["index"]) for g in gpus) + f" ({'/'.join(names)})"
    else:
        where = record.get("device") or "-"
    gpu = record.get("gpu") or {}
    cached = record.get("cached")
    return (str(job.get("model") or "-"), str(job.get("backend") or "-"), text, where,
            _num(record.get("wall_s"), ".1f", "s"), _num(record.get("load_s"), ".1f", "s"),
            _num(record.get("requests_per_s"), ".1f"), _num(record.get("tokens_per_s"), ".0f"),
            _gib(gpu.get("group_peak_mem_bytes")), _gib(record.get("host_peak_rss_bytes")),
            "-" if cached is None else ("yes" if cached else "no"))
