"""The project's tests behave the same under `.venv/bin/pytest` and `python -m pytest`.

The README runs `.venv/bin/pytest` over an editable install, where setuptools' finder,
not sys.path, imports pytest_disteval, so pytest cannot rewrite it. If anything then
puts the repository root on sys.path (a conftest.py at the root did), every in-process
run after it finds the package on sys.path, marks it for rewriting and warns that it is
already imported: an error wherever that run says `-W error`.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# the console script over a PEP 660 editable install: sys.path without the checkout, the
# package found by a meta-path finder after PathFinder (as setuptools' finder is)
CONSOLE_SCRIPT_OVER_AN_EDITABLE_INSTALL = """\
import importlib.machinery, importlib.util, os, sys
root = sys.argv.pop(1)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]

class EditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "pytest_disteval":
            return None
        package = os.path.join(root, name)
        return importlib.util.spec_from_file_location(
            name, os.path.join(package, "__init__.py"), submodule_search_locations=[package])

# before any installed editable finder, so that this checkout is the one imported
at = sys.meta_path.index(importlib.machinery.PathFinder) + 1
sys.meta_path.insert(at, EditableFinder)
import pytest
rc = pytest.console_main()
print("pytest_disteval imported from", sys.modules["pytest_disteval"].__file__)
sys.exit(rc)
"""


def test_an_in_process_run_with_warnings_as_errors_starts_clean(
        pytester: pytest.Pytester) -> None:
    # run by the test below in the console script's conditions; alone it checks the same
    # under whatever entry point runs it
    pytester.makepyfile("def test_ok():\n    pass\n")
    for _ in range(2):
        result = pytester.runpytest("-W", "error")
        assert "PytestAssertRewriteWarning" not in str(result.outlines + result.errlines)
        result.assert_outcomes(passed=1)


def test_the_console_script_over_an_editable_install_runs_in_process_runs_clean(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = f"{Path(__file__)}::test_an_in_process_run_with_warnings_as_errors_starts_clean"
    monkeypatch.delenv("PYTHONPATH", raising=False)  # pytester.run adds only its own dir
    result = pytester.run(
        sys.executable, "-c", CONSOLE_SCRIPT_OVER_AN_EDITABLE_INSTALL, str(ROOT), probe,
        "-p", "no:cacheprovider", f"--junitxml={pytester.path / 'probe.xml'}")
    suite = ET.parse(pytester.path / "probe.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0"), \
        result.stdout.str()
    assert result.ret == 0
    # the probe ran this checkout's package
    result.stdout.fnmatch_lines([f"pytest_disteval imported from {ROOT}*"])


def _quick_start(page: Path) -> list[str]:
    """The two commands of a page's quick start, in order."""
    block = page.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_as_written() -> None:
    readme = _quick_start(ROOT / "README.md")
    assert readme == _quick_start(ROOT / "docs" / "getting-started.md")
    _, test = readme
    venv, install, run = test.split(" && ")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert f"{venv} && {install.replace(' install ', ' install -q ')}" in ci
    assert run in ci  # alone on its line: no other entry point, no extra option


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_running_suites_installs_no_dev_tool_and_the_tests_install_the_rest() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"]["optional-dependencies"]
    run, test = _quick_start(ROOT / "README.md")
    assert "-r requirements.txt" in run and "-r requirements-dev.txt" in test
    # command 1: the CPU torch and the hf backend; not the ray and dev extras
    assert _requirements("requirements.txt") == ["torch==2.13.0", "-e .[hf]"]
    # command 2: all of command 1, then the extras the tests and the tools need
    dev = _requirements("requirements-dev.txt")
    assert dev[0] == "-r requirements.txt"
    assert dev[1:] == ["-e .[hf,ray,dev]"]
    tools = {req.split(">")[0].split("=")[0].split("<")[0].lower() for req in extras["dev"]}
    assert {"pytest-xdist", "ruff", "mypy", "mkdocs", "websocket-client"} <= tools
