"""The HTML report: one self-contained file (inline CSS, SVG and a little JS; nothing fetched).

Failing items come first; each threshold shows its score against its bound with a
stderr whisker, each budget its measurement against its limit, each regression its
delta from the baseline, and each job on GPUs its utilisation and memory over time.
Every text from outside (model names, failure text, paths) goes through ``escape``.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

from pytest_disteval.report.format import (
    ITEM_HEADER,
    JOB_HEADER,
    item_cells,
    item_suite,
    job_cells,
    verdict_line,
)
from pytest_disteval.units import parse_duration, parse_size

_CSS = """
:root{--fail:#c62828;--pass:#2e7d32;--skip:#8d6e00;--ink:#1d232a;--mute:#5f6b76;--line:#d9dee3}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);margin:0;padding:20px 28px;background:#f6f8fa}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:26px 0 8px}
.banner{padding:10px 14px;border-radius:6px;color:#fff;font-weight:600;margin:10px 0}
.banner.pass{background:var(--pass)}.banner.fail{background:var(--fail)}
.meta{color:var(--mute);font-size:12px}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid var(--line)}
th,td{padding:4px 7px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle;
white-space:nowrap}th{background:#eef1f4;font-weight:600;font-size:12px}
td.num{font-variant-numeric:tabular-nums}td.wrap{white-space:normal;min-width:14em}
.scroll{overflow-x:auto}
tr.failed td:first-child{border-left:4px solid var(--fail)}
tr.passed td:first-child{border-left:4px solid var(--pass)}
tr.skipped td:first-child{border-left:4px solid var(--skip)}
.r-failed{color:var(--fail);font-weight:700}.r-passed{color:var(--pass);font-weight:600}
.r-skipped{color:var(--skip)}
pre{margin:4px 0 6px;padding:8px;background:#fff5f5;border:1px solid #f1c6c6;
white-space:pre-wrap;font-size:12px}
tr.detail td{background:#fffafa;white-space:normal}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{background:#fff;border:1px solid var(--line);
padding:8px}.chart h3{font-size:13px;margin:0 0 4px}
label.toggle{font-size:13px;user-select:none;margin-right:18px}
.legend{font-size:12px;color:var(--mute);display:flex;align-items:center;flex-wrap:wrap}
.legend svg{vertical-align:middle;margin-right:4px}
details summary{cursor:pointer;color:var(--mute);font-size:12px}
"""

_JS = """
(function(){
  var box=document.getElementById('only-failed');
  function apply(){
    var rows=document.querySelectorAll('#items tbody tr');
    for(var i=0;i<rows.length;i++){
      var failed=rows[i].getAttribute('data-outcome')==='failed';
      rows[i].style.display=(box.checked&&!failed)?'none':'';
    }
  }
  box.addEventListener('change',apply);
  apply();
  document.body.setAttribute('data-ready','1');
})();
"""

_BAR_W, _BAR_H = 170, 18
_RESULT = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}
_LEGEND = ('<svg width="{w}" height="14" viewBox="0 0 {w} 14" aria-hidden="true">'
           '<rect x="0" y="3" width="60" height="8" fill="#2e7d32" opacity="0.8"/>'
           '<path d="M50 7H70M50 3V11M70 3V11" stroke="#1d232a" fill="none"/>'
           '<line x1="95" x2="95" y1="0" y2="14" stroke="#1d232a" stroke-width="2" '
           'stroke-dasharray="3 2"/>{ring}</svg> ')
_RING = '<circle cx="125" cy="7" r="3.5" fill="#fff" stroke="#3949ab" stroke-width="2"/>'


def _legend(report: dict[str, Any]) -> str:
    """The bars' legend; the baseline's ring only where a bar has one."""
    ring = any(_real(i["properties"].get("baseline_score")) is not None
               for i in report["items"])
    svg = _LEGEND.format(w=150 if ring else 110, ring=_RING if ring else "")
    return (f"{svg}bar: the score (a budget: the measurement); whisker: ± one standard "
            f"error; dashed line: the bound{'; ring: the baseline' if ring else ''}")


def _number(text: str, unit: str | None) -> float | None:
    try:
        if unit == "s":
            return parse_duration(text)
        if unit == "GiB":
            return parse_size(text) / 2**30 if text[-1:].isalpha() else float(text)
        return float(text.rstrip("%"))
    except (ValueError, IndexError):
        return None


def _bounds(props: dict[str, Any], unit: str | None = None) -> tuple[float | None, float | None]:
    """(min, max) of the item's bound: numbers from the bound's text, e.g. 'acc >= 0.9000'."""
    bound = props.get("bound")
    if isinstance(bound, int | float) and not isinstance(bound, bool):
        # a bare number: a rate must reach it, a time, a size or a share must stay below
        at_least = props.get("kind") != "budget" or unit in ("req/s", "tok/s")
        return (float(bound), None) if at_least else (None, float(bound))
    text = str(bound or "")
    low = re.search(r">=\s*([-\d.eE+]+\w*)", text)
    high = re.search(r"<=\s*([-\d.eE+]+\w*)", text)
    return (_number(low.group(1), unit) if low else None,
            _number(high.group(1), unit) if high else None)


def _real(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def bar(item: dict[str, Any]) -> str:
    """The score (or measurement) against its bound, as an inline SVG; '' when there is none."""
    p = item["properties"]
    unit = p.get("unit", "s") if item["kind"] == "budget" else None
    value = _real(p.get("measured") if item["kind"] == "budget" else p.get("score"))
    if value is None:
        return ""
    low, high = _bounds(p, unit)
    stderr = _real(p.get("stderr")) or 0.0
    base = _real(p.get("baseline_score"))
    top = max([v for v in (value + stderr, low, high, base) if v is not None] + [1e-9])
    if item["kind"] != "budget" and top <= 1.0:
        top = 1.0  # scores in [0, 1] keep one scale, so rows compare at a glance
    top *= 1.05

    def x(v: float) -> float:
        return round(max(0.0, min(v, top)) / top * _BAR_W, 1)

    colour = {"failed": "#c62828", "passed": "#2e7d32"}.get(item["outcome"], "#8d6e00")
    parts = [f'<svg class="bar" width="{_BAR_W}" height="{_BAR_H}" role="img" '
             f'viewBox="0 0 {_BAR_W} {_BAR_H}"><title>{escape(str(value))}'
             f'{" ± " + escape(str(stderr)) if stderr else ""} vs '
             f'{escape(str(p.get("bound", "")))}</title>',
             f'<rect x="0" y="4" width="{_BAR_W}" height="10" fill="#eef1f4"/>',
             f'<rect class="value" x="0" y="4" width="{x(value)}" height="10" '
             f'fill="{colour}" opacity="0.8"/>']
    if stderr:
        a, b = x(value - stderr), x(value + stderr)
        parts.append(f'<path class="whisker" d="M{a} 9H{b}M{a} 5V13M{b} 5V13" '
                     'stroke="#1d232a" stroke-width="1.2" fill="none"/>')
    for bound_value in (low, high):
        if bound_value is not None:
            parts.append(f'<line class="bound" x1="{x(bound_value)}" x2="{x(bound_value)}" '
                         'y1="0" y2="18" stroke="#1d232a" stroke-width="2" '
                         'stroke-dasharray="3 2"/>')
    if base is not None:
        parts.append(f'<circle class="baseline" cx="{x(base)}" cy="9" r="3.5" fill="#fff" '
                     'stroke="#3949ab" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def _timeline(path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_COLOURS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#ad1457",
            "#4e342e")


def line_chart(title: str, t: list[float], series: dict[str, list[float]], top: float,
               unit: str) -> str:
    """One inline SVG line chart: a polyline per GPU over the job's seconds."""
    w, h, pad = 360, 150, 34
    span = max(t[-1] if t else 1.0, 1e-9)
    top = top or 1.0
    out = [f'<div class="chart"><h3>{escape(title)}</h3><svg class="timeline" width="{w}" '
           f'height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{escape(title)}</title>',
           f'<line x1="{pad}" y1="{h - 20}" x2="{w - 6}" y2="{h - 20}" stroke="#999"/>',
           f'<line x1="{pad}" y1="8" x2="{pad}" y2="{h - 20}" stroke="#999"/>',
           f'<text x="2" y="14" font-size="10">{top:.3g}{escape(unit)}</text>',
           f'<text x="2" y="{h - 20}" font-size="10">0</text>',
           f'<text x="{w - 40}" y="{h - 6}" font-size="10">{span:.0f} s</text>']
    for n, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{pad + (tt / span) * (w - pad - 6):.1f},{(h - 20) - (v / top) * (h - 28):.1f}"
            for tt, v in zip(t, values, strict=False))
        colour = _COLOURS[n % len(_COLOURS)]
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                   'stroke-width="1.5"/>')
        out.append(f'<text x="{pad + 6 + 44 * n}" y="{h - 6}" font-size="10" '
                   f'fill="{colour}">GPU {escape(name)}</text>')
    out.append("</svg></div>")
    return "".join(out)


def _job_charts(job: dict[str, Any]) -> str:
    record = job.get("job") or {}
    gpu = record.get("gpu") or {}
    charts = []
    for path in gpu.get("timelines") or []:
        data = _timeline(path)
        if not data or not data.get("t"):
            continue
        worker = Path(path).stem.removeprefix("gpu-")
        util = {k: v.get("util_pct") or [] for k, v in (data.get("gpus") or {}).items()}
        mem = {k: [b / 2**30 for b in v.get("mem_used_bytes") or []]
               for k, v in (data.get("gpus") or {}).items()}
        totals = [g.get("memory_total_bytes", 0) / 2**30 for g in record.get("gpus") or []]
        # scaled to the peak, not the capacity: a small model's curve would be a flat line
        top_mem = max((max(v) for v in mem.values() if v), default=1.0) * 1.25
        of = f" (of {max(totals):.0f} GiB per GPU)" if totals and max(totals) else ""
        charts.append(line_chart(f"{worker}: GPU utilisation", data["t"], util, 100.0, "%"))
        charts.append(line_chart(f"{worker}: GPU memory{of}", data["t"], mem, top_mem,
                                 " GiB"))
    if not charts:
        why = ("ran on the CPU" if not record.get("gpus") or record.get("device") == "cpu"
               else "no timeline was recorded (results from the store, or NVML unavailable)")
        if record.get("cached"):
            why = "results came from the store"
        return f'<p class="meta">No GPU timelines: {escape(why)}.</p>'
    return f'<div class="charts">{"".join(charts)}</div>'


def _row(cells: tuple[str, ...], cls: str = "", attrs: str = "", tag: str = "td") -> str:
    inner = "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells)
    return f'<tr class="{cls}"{attrs}>{inner}</tr>'


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    gen = report["generator"]
    title = f"disteval: {s['verdict'].upper()} ({s['failed']} failed, {s['passed']} passed)"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
           "<h1>LLM evaluation report</h1>",
           f'<div class="meta">pytest-disteval {escape(gen["version"])}, lm-eval '
           f'{escape(str(gen["lm_eval_version"]))}, pytest {escape(gen["pytest_version"])} '
           f'on {escape(report["machine"]["host"])}; {escape(report["started_at"])} to '
           f'{escape(report["finished_at"])}; <code>pytest '
           f'{escape(" ".join(report["args"]))}</code></div>',
           f'<div class="banner {escape(s["verdict"])}" id="verdict">'
           f'{escape(verdict_line(report, mark=False).replace("**", ""))}</div>',
           "<h2>Items</h2>",
           '<p class="legend"><label class="toggle"><input type="checkbox" id="only-failed"> '
           "show failing items only</label><span>"
           f"{_legend(report)}</span></p>",
           '<div class="scroll"><table id="items"><thead>',
           _row((*ITEM_HEADER, "score vs bound"), tag="th"), "</thead><tbody>"]
    for item in report["items"]:
        # words, not the markdown's emoji: a browser may lack an emoji font
        cells = (_RESULT.get(item["outcome"], item["outcome"]), *item_cells(item))
        outcome = escape(item["outcome"])
        classes = [f"r-{outcome}", "", "", "", "num", "wrap", "num", ""]
        tds = "".join(f'<td class="{cls}">{escape(c)}</td>'
                      for cls, c in zip(classes, cells, strict=True))
        out.append(f'<tr class="{outcome}" data-outcome="{outcome}" '
                   f'data-nodeid="{escape(item["nodeid"])}">{tds}<td>{bar(item)}</td></tr>')
        if item.get("failure") or item.get("skip_reason"):
            text = item.get("failure") or item.get("skip_reason") or ""
            what = "why it failed" if item.get("failure") else "why it was skipped"
            out.append(f'<tr class="detail {outcome}" data-outcome="{outcome}">'
                       f'<td colspan="{len(cells) + 1}"><details><summary>{what}: '
                       f'<code>{escape(item["nodeid"])}</code></summary>'
                       f"<pre>{escape(text)}</pre></details></td></tr>")
    out.append("</tbody></table></div>")
    regressions = [i for i in report["items"] if i["kind"] == "regression"]
    if regressions:
        out += ["<h2>Baseline deltas</h2>", '<table id="baselines"><thead>',
                _row(("result", "model", "task", "metric", "baseline ± stderr",
                      "score ± stderr", "Δ", "test", "p", "flips worse / better",
                      "baseline hardware", "hardware", "suite"), tag="th"), "</thead><tbody>"]
        for item in regressions:
            p = item["properties"]

            def pm(v: Any, e: Any) -> str:
                return (f"{v:.4f} ± {e:.4f}" if isinstance(e, int | float) else f"{v:.4f}") \
                    if isinstance(v, int | float) else "-"

            out.append(_row((_RESULT.get(item["outcome"], item["outcome"]),
                             str(item.get("model") or "-"),
                             str(p.get("task", "")), str(p.get("metric", "")),
                             pm(p.get("baseline_score"), p.get("baseline_stderr")),
                             pm(p.get("score"), p.get("stderr")),
                             f"{p['delta']:+.4f}" if isinstance(p.get("delta"), int | float)
                             else "-", str(p.get("test", "-")),
                             f"{p['p_value']:.3g}" if isinstance(p.get("p_value"), int | float)
                             else "-",
                             f"{p.get('flipped_worse', '-')} / {p.get('flipped_better', '-')}",
                             str(p.get("baseline_hardware", "-")), str(p.get("hardware", "-")),
                             item_suite(item)),
                            cls=escape(item["outcome"])))
        out.append("</tbody></table>")
    out += ["<h2>Jobs</h2>", '<table id="jobs"><thead>', _row(JOB_HEADER, tag="th"),
            "</thead><tbody>"]
    out += [_row(job_cells(job)) for job in report["jobs"]]
    out.append("</tbody></table>")
    exports = [j for j in report["jobs"] if j.get("samples_path")]
    if exports:
        # --disteval-samples: each job's prompts and responses, one JSON line each
        out.append('<p>Per-sample export (JSONL, secrets redacted):</p><ul id="samples">')
        out += [f'<li>{escape(str(j["model"]))}: <a href="{escape(_href(j["samples_path"]))}">'
                f'{escape(str(j["samples_path"]))}</a></li>' for j in exports]
        out.append("</ul>")
    for job in report["jobs"]:
        out.append(f"<h2>{escape(str(job['id']))}</h2>")
        out.append(_job_charts(job))
    out += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(out)


def _href(path: str) -> str:
    return Path(path).as_uri() if Path(path).is_absolute() else path


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report), encoding="utf-8")
