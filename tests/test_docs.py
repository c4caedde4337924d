"""The user guide builds with mkdocs in strict mode: a broken link or anchor, or a page
left out of the nav, fails here (and so in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_guide_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for page in ("getting-started", "preflight", "quick-look", "troubleshooting",
                 "backends/vllm"):
        assert (tmp_path / "site" / page / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    # strict mode only warns about pages missing from the nav when validation says so
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    missing = [p for p in pages if p not in config]
    assert not missing, f"add to the nav of mkdocs.yml: {missing}"
