"""The per-session plugin object: planning jobs, keeping suite errors local, the summary."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest

from pytest_disteval.gpu.inventory import NoGPUError
from pytest_disteval.items.nodes import DistevalItem, SuiteFile
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.report.live import ProgressLine, enabled
from pytest_disteval.report.run import RunRecorder
from pytest_disteval.report.terminal import SummaryTable, render_jobs
from pytest_disteval.report.write import write_reports
from pytest_disteval.state import SCHEDULER, SETTINGS


class DistevalSession:
    """Registered in pytest_configure; holds what the hooks of one session share."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.suite_errors = 0
        self.summary = SummaryTable()
        self.recorder = RunRecorder(args=[str(a) for a in config.invocation_params.args],
                                    rootdir=str(config.rootpath))
        self.run_report: dict[str, Any] | None = None
        self.written: list[tuple[str, str]] = []  # (what, path) of the reports written
        self.progress_fd = self._progress_fd(config)
        self.started = time.time()
        self.doctor_failed: bool | None = None  # set by --disteval-doctor
        self.plan_failed = False  # --disteval-plan: a job that cannot be laid out

    @staticmethod
    def _progress_fd(config: pytest.Config) -> int | None:
        settings = config.stash[SETTINGS]
        try:
            fd = sys.stdout.fileno()  # capture is suspended now: this is the terminal
        except (AttributeError, OSError, ValueError):
            return None  # an in-process pytester run: no real stdout
        if not enabled(settings.reports.progress, fd, config.get_verbosity(),
                       settings.is_xdist_worker):
            return None
        return os.dup(fd)  # pytest captures fd 1 while items run; this stays the terminal

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        # (the terminal reporter is looked up now: it registers after this plugin)
        if (self.progress_fd is None or not isinstance(item, DistevalItem)
                or self.config.pluginmanager.get_plugin("terminalreporter") is None):
            yield
            return
        line = ProgressLine(self.progress_fd, self.config.get_terminal_writer(),
                            self.config.stash[SCHEDULER], self.config.stash[SETTINGS].runs_dir,
                            self.started)
        line.start()
        try:
            yield
        finally:
            line.stop()

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
        if self.config.stash[SETTINGS].doctor:
            self._doctor(scheduler)

    def _doctor(self, scheduler: JobScheduler) -> None:
        # --disteval-doctor: every check, printed; the exit status says if one failed
        from pytest_disteval import preflight as doctor

        checks = doctor.Doctor(scheduler).run()
        self.doctor_failed = any(c.status == doctor.FAIL for c in checks)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "disteval doctor")
            for line in doctor.render(checks):
                reporter.write_line(line)
            reporter.write_line(doctor.counts(checks))

    def _preflight(self, session: pytest.Session) -> None:
        """The checks a run on GPUs needs, before any worker starts; CPU runs skip them."""
        from pytest_disteval import preflight as doctor

        scheduler = self.config.stash[SCHEDULER]
        try:
            plans = scheduler.plan_all()
        except (NoGPUError, ValueError):
            plans = {}
        if not any(p.groups and p.groups[0] for p in plans.values()) and not (
                self.config.stash[SETTINGS].gpu.gpus not in (None, 0, "all")
                or self.config.stash[SETTINGS].gpu.gpu_ids):
            # nothing runs on a GPU: nothing of it to check, and it stays free; the chat
            # template checks need none, and what they find is shown (a FAIL fails only
            # its job: its worker refuses the template)
            self._chat_checks(scheduler)
            return
        checks = doctor.Doctor(scheduler, preflight=True).run()
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("-", f"disteval preflight: {doctor.counts(checks)}")
            for line in doctor.render(checks, only_problems=True):
                reporter.write_line(line)
        if any(c.status == doctor.FAIL for c in checks):
            if self.config.stash[SETTINGS].is_xdist_worker:
                # a worker cannot stop the controller's session: its jobs fail instead
                scheduler.preflight_failure = doctor.failure_message(checks)
            else:
                pytest.exit(doctor.failure_message(checks, listed=reporter is not None),
                            returncode=doctor.EXIT_PREFLIGHT)

    def _chat_checks(self, scheduler: JobScheduler) -> None:
        from pytest_disteval import preflight as doctor
        from pytest_disteval.preflight.chat import chat

        problems = [c for c in chat(scheduler.jobs.values()) if c.status != doctor.PASS]
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if problems and reporter is not None:
            reporter.write_sep("-", f"disteval preflight: {doctor.counts(problems)}")
            for line in doctor.render(problems):
                reporter.write_line(line)

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
                start = scheduler.start_line(job, plan)
                lines += [start] if start else []
                lines += _executor_lines(scheduler, plan.groups)
            except LayoutError as exc:
                self.plan_failed = True
                lines = [f"job {job.suite.path}::{job.name}  backend={job.model.backend}",
                         f"  cannot lay out: {exc}"]
            for line in lines:
                reporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        # a broken suite is one collection error; the other suites still run
        if self.suite_errors and session.testsfailed == self.suite_errors:
            session.config.option.continue_on_collection_errors = True
        if self.config.stash[SETTINGS].plan_only or self.config.stash[SETTINGS].doctor:
            return True  # the plan or the checks are printed; nothing runs
        if not session.config.option.collectonly and session.items:
            # the forkserver's imports overlap the preflight's checks
            self.config.stash[SCHEDULER].warm_up()
            self._preflight(session)
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
        self.recorder.add(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.doctor_failed is not None:
            # --disteval-doctor: the collected items never ran, the checks decide
            session.exitstatus = 1 if self.doctor_failed else 0
            return
        settings = self.config.stash[SETTINGS]
        if settings.plan_only and self.plan_failed and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the run would fail the job
        if settings.is_xdist_worker or settings.plan_only or self.config.option.collectonly:
            return  # the controller writes the reports, once
        self.run_report, self.written = write_reports(
            self.recorder, settings, self.config.stash[SCHEDULER], int(exitstatus))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.summary.rows:
            terminalreporter.write_sep("=", "disteval summary")
            for line in self.summary.render():
                terminalreporter.write_line(line)
        jobs = (self.run_report or {}).get("jobs") or []
        if jobs:
            terminalreporter.write_line("")
            for line in render_jobs(jobs):
                terminalreporter.write_line(line)
        for what, path in self.written:
            terminalreporter.write_line(f"disteval {what} report: {path}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        config.stash[SCHEDULER].close()
        if self.progress_fd is not None:
            os.close(self.progress_fd)


def _executor_lines(scheduler: JobScheduler, groups: list[Any] | None = None) -> list[str]:
    """The Ray placement in the plan: the cluster (groups None), or a job's actors."""
    from pytest_disteval.executors.ray import RayExecutor, RayInventory

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
