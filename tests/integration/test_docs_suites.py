"""The suites the guide runs exist for a reader: shipped in suites/, or shown on a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def _shown() -> dict[str, str]:
    """Suites whose YAML a page shows, headed `# suites/NAME.yaml`, by path -> the YAML."""
    blocks = {}
    for page in PAGES:
        for match in re.finditer(r"```yaml\n(# (suites/[\w.-]+\.yaml)\b.*?)```",
                                 page.read_text(encoding="utf-8"), re.S):
            blocks[match.group(2)] = match.group(1)
    return blocks


def test_every_suite_a_page_runs_is_shipped_or_shown() -> None:
    shown = _shown()
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for command in re.findall(r"pytest ((?:suites/[\w.-]+\.yaml ?)+)", text):
            for suite in command.split():
                # "suites/llama-7b.yaml is the same with ...": shown by difference
                described = re.search(rf"`?{re.escape(suite)}`? is the same", text)
                if not ((ROOT / suite).is_file() or suite in shown or described):
                    missing.append(f"{page.relative_to(ROOT)}: {suite}")
    assert not missing, f"run by a page, neither shipped nor shown: {missing}"


def test_the_offline_first_suite_collects_the_items_the_page_shows(
        project: pytest.Pytester) -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    (project.path / "suites" / "first.yaml").write_text(_shown()["suites/first.yaml"])
    # its paths are relative to the suite: the demo models beside suites/, as in a checkout
    (project.path / "demo").symlink_to(ROOT / "demo")
    result = project.runpytest("suites/first.yaml", "--collect-only", "-q")
    shown = page.split("$ pytest suites/first.yaml --collect-only -q\n", 1)[1].split("\n\n")[0]
    result.stdout.fnmatch_lines(shown.splitlines())
    assert result.ret == 0


def test_the_instruct_suite_parses_with_the_keys_the_page_names() -> None:
    from pytest_disteval.suite.parse import SuiteError, parse_suite

    shown = _shown()["suites/qwen-instruct.yaml"]
    # a hub id, not a path: parsing needs no download
    suite = parse_suite(shown, ROOT / "suites" / "qwen-instruct.yaml", ROOT)
    (model,) = suite.models
    entries = {e.task: e for e in model.tasks}
    assert set(entries) == {"gsm8k", "mmlu_high_school_mathematics", "humaneval"}
    assert all(e.eval_setting("apply_chat_template") is True for e in entries.values())
    for task in ("gsm8k", "mmlu_high_school_mathematics"):
        assert entries[task].num_fewshot == 5
        assert entries[task].eval_setting("fewshot_as_multiturn") is True
    # the page says collection refuses humaneval without the consent key: it does
    without = "\n".join(line for line in shown.splitlines()
                        if "confirm_run_unsafe_code" not in line)
    with pytest.raises(SuiteError, match="add 'confirm_run_unsafe_code: true'"):
        parse_suite(without, ROOT / "suites" / "qwen-instruct.yaml", ROOT)
