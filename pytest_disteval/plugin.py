"""pytest hooks only: options, suite collection, session wiring, summary."""

from __future__ import annotations

from pathlib import Path


import pytest

from . import settings as settings_mod
from .items import SuiteFile
from .session import DistevalSession
from .scheduler import JobScheduler
from .state import SCHEDULER, SETTINGS
from .suite import is_suite


pytest_plugins = ["pytest_disteval.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("disteval", "LLM evaluation suites (pytest-disteval)")
    group.addoption("--disteval-dir", dest="disteval_dir", metavar="DIR", default=None,
                    help="Directory for the result store, results, logs and worker runs "
                         "(default: <rootdir>/.disteval)")
    group.addoption("--disteval-no-cache", dest="disteval_cache", action="store_false",
                    default=None,
                    help="Evaluate everything again; neither read nor write the result store")
    group.addoption("--disteval-cache", dest="disteval_cache", action="store_true",
                    help="Reuse stored results whose key matches (default)")
    group.addoption("--disteval-clear-cache", dest="disteval_clear_cache", action="store_true",
                    default=False, help="Delete the result store before the run")
    group.addoption("--disteval-timeout", dest="disteval_timeout", metavar="DURATION",
                    default=None,
                    help="Wall-time limit of one job's worker, e.g. 90s, 30m, 2h, or off "
                         f"(default: {settings_mod.DEFAULT_TIMEOUT})")
    parser.addini("disteval_dir", "Directory for the result store, results and logs",
                  default="")
    parser.addini("disteval_cache", "Reuse stored results (true/false)", default="")
    parser.addini("disteval_timeout", "Wall-time limit of one job's worker", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "disteval(suite, model, backend, task, metric, kind): an item made from a "
                   "suite file; select with -m \"disteval(model='name')\"")
    config.addinivalue_line("markers", "threshold: a score threshold item of a suite")
    config.addinivalue_line("markers", "budget: a budget item of a suite")
    resolved = settings_mod.resolve(config)
    config.stash[SETTINGS] = resolved
    config.stash[SCHEDULER] = JobScheduler(resolved)
    config.pluginmanager.register(DistevalSession(config), "disteval-session")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # with xdist, `-n N` alone means --dist load; items of one job must share a worker
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "no") == "no":
        option.dist = "loadgroup"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite(file_path):
        return SuiteFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None
