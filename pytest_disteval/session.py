"""The per-session plugin object: planning jobs, keeping suite errors local, the summary."""

from __future__ import annotations

from typing import Any

import pytest

from .gpus import NoGPUError
from .items import DistevalItem, SuiteFile
from .layout import LayoutError
from .report import SummaryTable
from .scheduler import JobScheduler
from .state import SCHEDULER, SETTINGS


class DistevalSession:
    """Registered in pytest_configure; holds what the hooks of one session share."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.suite_errors = 0
        self.summary = SummaryTable()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and getattr(report, "disteval_suite", False):
            self.suite_errors += 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        outcome = yield
        if isinstance(collector, SuiteFile):
            # tag the report so errors of suite files can be told from others
            outcome.get_result().disteval_suite = True

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # jobs are planned from the items left after -k / -m deselection
        scheduler = self.config.stash[SCHEDULER]
        for item in session.items:
            if isinstance(item, DistevalItem):
                # a budget is about the whole job: selecting it selects all the model's tasks
                entries = [item.entry] if item.entry else item.job.model.tasks
                item.job = scheduler.job_for(item.job, entries)
        if self.config.stash[SETTINGS].plan_only:
            self._print_plan(scheduler)

    def _print_plan(self, scheduler: JobScheduler) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        try:
            source = scheduler.inventory_source() or "none (CPU)"
        except (NoGPUError, ValueError) as exc:
            source = f"none ({exc})"
        reporter.write_sep("=", f"disteval plan (GPU inventory: {source})")
        for line in _executor_lines(scheduler):
            reporter.write_line(line)
        scheduler.plan_all()  # as the run would: several jobs share the groups
        for job in scheduler.jobs.values():
            try:
                plan = scheduler.plan(job)
                lines = plan.describe(job, scheduler.settings.python)
                lines += _executor_lines(scheduler, plan.groups)
            except LayoutError as exc:
                lines = [f"job {job.suite.path}::{job.name}  backend={job.model.backend}",
                         f"  cannot lay out: {exc}"]
            for line in lines:
                reporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        # a broken suite is one collection error; the other suites still run
        if self.suite_errors and session.testsfailed == self.suite_errors:
            session.config.option.continue_on_collection_errors = True
        if self.config.stash[SETTINGS].plan_only:
            return True  # the plan is printed; nothing runs
        if not session.config.option.collectonly:
            # with GPUs, jobs start now, side by side on free groups
            self.config.stash[SCHEDULER].prefetch()
        return None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        outcome = yield
        report = outcome.get_result()
        if (isinstance(item, DistevalItem) and report.skipped
                and isinstance(report.longrepr, tuple)):
            # point a skip at the suite line, not at this package's code
            report.longrepr = (str(item.path), item.loc.line, report.longrepr[2])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.summary.add(report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.summary.rows:
            return
        terminalreporter.write_sep("=", "disteval summary")
        for line in self.summary.render():
            terminalreporter.write_line(line)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        config.stash[SCHEDULER].close()


def _executor_lines(scheduler: JobScheduler, groups: list[Any] | None = None) -> list[str]:
    """The Ray placement in the plan: the cluster (groups None), or a job's actors."""
    from .executors.ray import RayExecutor, RayInventory

    executor = scheduler.executor
    if not isinstance(executor, RayExecutor):
        return []
    try:
        if groups is None:
            return executor.describe_cluster()
    except NoGPUError as exc:
        return [f"executor: ray; {exc}"]
    inv = scheduler.inventory()
    return executor.describe_groups(groups, inv if isinstance(inv, RayInventory) else None)
