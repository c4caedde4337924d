"""pytest hooks only: options, suite collection, session wiring, summary."""

from __future__ import annotations

import gc
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_disteval import settings as settings_mod
from pytest_disteval.items.nodes import DistevalItem, SuiteFile
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.options import OPTIONS
from pytest_disteval.session import DistevalSession
from pytest_disteval.state import SCHEDULER, SETTINGS
from pytest_disteval.suite.parse import is_suite

pytest_plugins = ["pytest_disteval.fixtures"]

# suite items from which on collection's objects are frozen out of the cyclic GC (below)
FREEZE_ITEMS = 1000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("disteval", "LLM evaluation suites (pytest-disteval)")
    for option in OPTIONS:
        # default None: settings.py tells a value given from one left out (then ini, env)
        if option.metavar is None:
            group.addoption(option.flag, dest=option.dest, action="store_true", default=None,
                            help=option.full_help)
        else:
            group.addoption(option.flag, dest=option.dest, metavar=option.metavar,
                            default=None, help=option.full_help)
        if option.off_flag is not None:
            group.addoption(option.off_flag, dest=option.dest, action="store_false",
                            default=None, help=option.off_help)
        if option.ini is not None:
            if option.boolean:  # --help shows it as (bool)
                parser.addini(option.ini, option.full_help, type="bool", default=None)
            else:
                parser.addini(option.ini, option.full_help, default=None)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    # the package's own hooks: the regression feature and other plugins add to items there
    from pytest_disteval import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "disteval(suite, model, backend, task, metric, kind): an item made from a "
                   "suite file; select with -m \"disteval(model='name')\"")
    config.addinivalue_line("markers", "threshold: a score threshold item of a suite")
    config.addinivalue_line("markers", "budget: a budget item of a suite")
    config.addinivalue_line("markers", "regression: a score compared with a baseline file")
    config.addinivalue_line("markers", "gpu_group(size): the size of the group the gpu_group "
                                       "fixture leases to the test (default 1)")
    if config.getoption("disteval_doctor") and getattr(config.option, "dist", "no") != "no":
        # the doctor prints here and runs nothing: no xdist workers (xdist configures later)
        config.option.dist, config.option.tx = "no", []
    # resolved already where xdist asked for -n auto's worker count
    resolved = config.stash.get(SETTINGS, None) or settings_mod.resolve(config)
    config.stash[SETTINGS] = resolved
    config.stash[SCHEDULER] = JobScheduler(resolved)
    config.pluginmanager.register(DistevalSession(config), "disteval-session")
    if resolved.baseline is not None or resolved.save_baseline is not None:
        from pytest_disteval.regression.plugin import BaselinePlugin

        config.pluginmanager.register(BaselinePlugin(config, resolved), "disteval-baseline")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_disteval.xdist_hooks import XdistHooks

        config.pluginmanager.register(XdistHooks(), "disteval-xdist")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    # a YAML file named on the command line too: its error says why it is not a suite,
    # where pytest would only say 'not found'
    if is_suite(file_path) or (file_path.suffix in {".yaml", ".yml"}
                               and parent.session.isinitpath(file_path)):
        return SuiteFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    # -n auto: one xdist worker per group. xdist asks before pytest_configure, so the
    # settings are resolved here first; None leaves xdist's default (CPUs)
    from pytest_disteval.plan.planner import groups_available

    config.stash[SETTINGS] = settings_mod.resolve(config)
    return groups_available(config.stash[SETTINGS].gpu)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    # the cyclic GC's passes over a heap growing by 10,000s of nodes made collecting a
    # large suite superlinear: paused while collecting, its garbage is left for later
    paused = gc.isenabled()
    gc.disable()
    try:
        return (yield)
    finally:
        if paused:
            gc.enable()
        items = getattr(session, "items", [])
        if sum(isinstance(item, DistevalItem) for item in items) >= FREEZE_ITEMS:
            # a large suite's items live as long as the session: frozen (with what else
            # collection left), the GC's later full passes, and those at interpreter exit
            # (seconds for 10,000 items on a loaded machine), no longer walk them
            gc.freeze()
