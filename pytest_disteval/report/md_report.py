"""The markdown summary: verdict, failures first, the item table and the job table.

Written with ``--disteval-md PATH`` and appended to ``$GITHUB_STEP_SUMMARY`` when
that is set, so a GitHub Actions run shows it on the run's page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_disteval.report.format import (
    ITEM_HEADER,
    JOB_HEADER,
    item_cells,
    job_cells,
    verdict_line,
)

_RESULT = {"passed": "✅ pass", "failed": "❌ FAIL", "skipped": "⏭ skip"}


def _cell(text: str) -> str:
    # a pipe ends a cell and a newline a row: neither may come from a model name
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


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
    lines += _table(ITEM_HEADER, [(_RESULT.get(i["outcome"], i["outcome"]), *item_cells(i))
                                for i in report["items"]])
    lines += ["", "### Jobs", ""]
    lines += _table(JOB_HEADER, [job_cells(j) for j in report["jobs"]])
    exports = [j for j in report["jobs"] if j.get("samples_path")]
    if exports:
        # --disteval-samples: where each job's prompts and responses are
        lines += ["", "Per-sample export (JSONL, secrets redacted):", ""]
        lines += [f"- {_cell(str(j['model']))}: `{j['samples_path']}`" for j in exports]
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
