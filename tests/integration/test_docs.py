"""The user guide builds with mkdocs in strict mode: a broken link or anchor, or a page
left out of the nav, fails here (and so in CI)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Demo
from helpers import model_block, write_suite

ROOT = Path(__file__).resolve().parents[2]


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


# --- docs/architecture.md, the map of the package: kept true by the tests below ---

PACKAGE = ROOT / "pytest_disteval"
MAP = ROOT / "docs" / "architecture.md"
TOKEN = re.compile(r"`([^`\s]+)`")
MODULE = re.compile(r"[a-z_][a-z0-9_/]*\.py")  # a module path, as the map writes one


def map_rows() -> dict[str, tuple[str, set[str]]]:
    """The map's rows: part (``suite/``, ``plugin.py``) -> (what it does, what it may import)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    text = MAP.read_text(encoding="utf-8").split("## The map", 1)[1].split("\n## ", 1)[0]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = set(TOKEN.findall(cells[2].split(";")[0]))  # what follows ';' is prose
        rows[TOKEN.findall(cells[0])[0]] = (cells[1], allowed)
    return rows


def part_of(module: str) -> str:
    """``jobs/launch.py`` -> ``jobs/``; ``plugin.py`` -> ``plugin.py``."""
    return module.split("/")[0] + "/" if "/" in module else module


def package_modules() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}


def test_the_map_names_every_module_and_only_modules_that_exist() -> None:
    text = MAP.read_text(encoding="utf-8")
    named = {t for t in TOKEN.findall(text) if MODULE.fullmatch(t)}
    modules = package_modules()
    # a subpackage's __init__.py is its row; every other module is named, as a path
    wanted = {m for m in modules if not m.endswith("/__init__.py")}
    missing = sorted(wanted - named)
    assert not missing, f"docs/architecture.md does not name {missing}: add each to its row"
    repo = {t for t in named if t.split("/")[0] in ("tests", "benchmarks")}
    gone = sorted(t for t in named - modules - repo)
    gone += sorted(t for t in repo if not (ROOT / t).is_file())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
    rows = map_rows()
    parts = {part_of(m) for m in modules}
    assert sorted(parts - set(rows)) == [], "every subpackage and top-level module has a row"
    assert sorted(set(rows) - parts) == [], "every row is a subpackage or top-level module"
    for part, (does, _) in rows.items():
        if part.endswith("/"):
            inside = sorted(m for m in wanted if part_of(m) == part and f"`{m}`" not in does)
            assert not inside, f"the row of {part} does not name {inside}"


def imports_of(path: Path) -> set[str]:
    """The package modules a module imports (lazy and type-checking imports too)."""
    found: set[str] = set()

    def module_file(dotted: str) -> str | None:
        base = PACKAGE.joinpath(*dotted.split(".")[1:])
        if base.with_suffix(".py").is_file():
            return str(base.with_suffix(".py").relative_to(PACKAGE))
        if (base / "__init__.py").is_file():
            return str((base / "__init__.py").relative_to(PACKAGE))
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_disteval"):
            module = str(node.module)
            # ``from pytest_disteval.jobs import record`` imports jobs/record.py
            found.update(module_file(f"{module}.{a.name}") or module_file(module) or module
                         for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(module_file(a.name) or a.name for a in node.names
                         if a.name.startswith("pytest_disteval"))
    return found


def test_every_import_keeps_to_the_layering_rule_of_the_map() -> None:
    rows = map_rows()
    broken = []
    for module in sorted(package_modules()):
        part = part_of(module)
        allowed = rows[part][1]
        for target in sorted(imports_of(PACKAGE / module)):
            if target == "__init__.py" or part_of(target) == part:
                continue  # the root's __version__, and a part's own modules
            if target not in allowed and part_of(target) not in allowed:
                broken.append(f"{module} imports {target}")
    assert not broken, ("imports the 'may import' column of docs/architecture.md does not "
                        f"allow (change the code, or the rule and say why): {broken}")


def test_the_worker_imports_nothing_of_pytest() -> None:
    # the map says so: a worker is a plain process, pytest is the parent's business
    found = []
    for path in sorted((PACKAGE / "worker").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"worker/{path.name}:{node.lineno}: {n}" for n in names
                      if n.split(".")[0] in ("pytest", "_pytest", "pluggy")]
    assert found == []


HOOKS_SUITE = """\
disteval: 1
include: [tasks]
models:
{model}tasks:
  - task: arith_mc
    limit: 8
    thresholds: {{acc: 0.0}}
  - task: arith_gen
    name: arith_gen-3shot
    num_fewshot: 3
    limit: 4
    thresholds:
      exact_match,strict-match: 0.0
"""


def test_the_maps_hook_example_runs(project: pytest.Pytester, demo: Demo) -> None:
    # the example a plugin writer copies: as the page's conftest.py, on the demo model
    section = MAP.read_text(encoding="utf-8").split("## Hooks for plugin writers", 1)[1]
    project.makeconftest(section.split("```python\n", 1)[1].split("```", 1)[0])
    write_suite(project, "smoke", HOOKS_SUITE.format(model=model_block("tiny", demo.good)))
    collected = project.runpytest("--collect-only", "-q", "suites")
    assert [line for line in collected.outlines if "zero-shot" in line] == [
        "suites/smoke.yaml::tiny::arith_mc::zero-shot",
        "suites/smoke.yaml::tiny::arith_gen-3shot::zero-shot",
    ]
    result = project.runpytest("-s", "-p", "no:cacheprovider", "suites")
    result.assert_outcomes(passed=3, failed=1)  # the 3-shot entry is not zero-shot
    ran = re.findall(r"tiny: \['arith_gen-3shot', 'arith_mc'\] in \d+\.\d s", result.stdout.str())
    assert len(ran) == 1, result.stdout.str()  # once per job, though both threshold items read it
    warm = project.runpytest("-s", "-p", "no:cacheprovider", "suites")
    assert "tiny: [" not in warm.stdout.str()  # a job read from the store did not run
