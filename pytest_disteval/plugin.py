"""pytest hooks only: options, suite collection, session wiring, summary."""

from __future__ import annotations

import gc
from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_disteval import settings as settings_mod
from pytest_disteval.items.nodes import DistevalItem, SuiteFile
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.session import DistevalSession
from pytest_disteval.state import SCHEDULER, SETTINGS
from pytest_disteval.suite.parse import is_suite

pytest_plugins = ["pytest_disteval.fixtures"]

# suite items from which on collection's objects are frozen out of the cyclic GC (below)
FREEZE_ITEMS = 1000


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
    group.addoption("--gpus", dest="disteval_gpus", metavar="N",
                    help="GPUs to use: a count, 'all', or 0 for CPU "
                         "(default: all visible GPUs, or CPU where there are none)")
    group.addoption("--gpu-ids", dest="disteval_gpu_ids", metavar="IDS",
                    help="Explicit GPU indices to use, e.g. 0,1,2,3")
    group.addoption("--tp", dest="disteval_tp", metavar="N",
                    help="Tensor parallel size of each group, or auto (overrides suites)")
    group.addoption("--pp", dest="disteval_pp", metavar="N",
                    help="Pipeline parallel size of each group (overrides suites)")
    group.addoption("--dp", dest="disteval_dp", metavar="N",
                    help="Replicas sharing each job's requests (default: as many groups as "
                         "the GPUs allow; 1 on CPU)")
    group.addoption("--disteval-pack", dest="disteval_pack", metavar="N",
                    help="Replicas per group, for models too small to keep a GPU busy "
                         "(default: 1)")
    group.addoption("--disteval-plan", dest="disteval_plan", action="store_true",
                    default=False,
                    help="Print jobs, layouts, GPU groups and worker commands; run nothing")
    group.addoption("--disteval-fake-gpus", dest="disteval_fake_gpus", metavar="SPEC",
                    help="Plan for a GPU inventory this host lacks, e.g. 8x80GiB or "
                         "8x80GiB:H100/4 (NVLink domains of 4)")
    group.addoption("--disteval-doctor", dest="disteval_doctor", action="store_true",
                    default=False,
                    help="Print the preflight checks (GPUs, driver, NCCL, backends, "
                         "interconnect, disk, offline models and datasets) and exit; "
                         "run nothing")
    group.addoption("--disteval-limit", dest="disteval_limit", metavar="N",
                    help="Quick look: at most N documents per task entry; results are marked "
                         "partial and thresholds get a 2 x stderr tolerance (default: no cap)")
    group.addoption("--disteval-dtype", dest="disteval_dtype", metavar="DTYPE",
                    help="The dtype of every model: auto, float32, float16 or bfloat16 "
                         "(default: each suite's)")
    group.addoption("--disteval-batch-size", dest="disteval_batch_size", metavar="N",
                    help="Batch size for every model: N, auto or auto:N (default: each suite's)")
    group.addoption("--disteval-model-args", dest="disteval_model_args", metavar="K=V,...",
                    help="Backend options merged into every model's model_args, e.g. "
                         "gpu_memory_utilization=0.8 (default: none)")
    group.addoption("--disteval-executor", dest="disteval_executor", metavar="NAME",
                    help="Where workers run: local (subprocesses on this host) or ray "
                         "(actors on a Ray cluster, GPUs from Ray) (default: local)")
    group.addoption("--disteval-worker-start", dest="disteval_worker_start", metavar="HOW",
                    help="How local workers start: forkserver (hf and scoring workers forked "
                         "from one process that imported torch, transformers and lm-eval "
                         "once), subprocess (each imports everything itself), or auto "
                         "(as forkserver; default)")
    group.addoption("--ray-address", dest="ray_address", metavar="ADDRESS",
                    help="Ray cluster for --disteval-executor ray: auto, ray://host:port or "
                         "host:port (default: $RAY_ADDRESS, else a local Ray instance)")
    group.addoption("--disteval-baseline", dest="disteval_baseline", metavar="PATH",
                    help="Compare with the baseline file PATH: a regression item per threshold "
                         "metric (and per metric under a task entry's 'regression' key)")
    group.addoption("--disteval-save-baseline", dest="disteval_save_baseline", metavar="PATH",
                    help="Write this run's scores, stderrs, n and per-document results to the "
                         "baseline file PATH")
    group.addoption("--disteval-alpha", dest="disteval_alpha", metavar="P",
                    help="Significance level of the regression tests (default: 0.05)")
    group.addoption("--disteval-json", dest="disteval_json", metavar="PATH", default=None,
                    help="Write the JSON report of the run to PATH, or off "
                         "(default: <disteval dir>/report.json)")
    group.addoption("--disteval-md", dest="disteval_md", metavar="PATH", default=None,
                    help="Write a markdown summary to PATH (it is also appended to "
                         "$GITHUB_STEP_SUMMARY when that is set)")
    group.addoption("--disteval-html", dest="disteval_html", metavar="PATH", default=None,
                    help="Write a self-contained HTML report to PATH")
    group.addoption("--disteval-progress", dest="disteval_progress", metavar="WHEN",
                    default=None,
                    help="Live progress of running jobs: auto (on a terminal only), on or off "
                         "(default: auto)")
    # one ini key per option: the same words, resolved in settings.py (command line > ini > env)
    for name, text in INI_KEYS:
        parser.addini(f"disteval_{name}", text, default="")


INI_KEYS = (
    ("dir", "Directory for the result store, results and logs"),
    ("cache", "Reuse stored results (true/false)"),
    ("timeout", "Wall-time limit of one job's worker"),
    ("gpus", "GPUs to use: a count, all, or 0"),
    ("gpu_ids", "Explicit GPU indices, e.g. 0,1,2,3"),
    ("tp", "Tensor parallel size, or auto"),
    ("pp", "Pipeline parallel size"),
    ("dp", "Replicas per job"),
    ("pack", "Replicas per group"),
    ("limit", "Documents per task entry, at most (quick look)"),
    ("dtype", "dtype for every model"),
    ("batch_size", "Batch size for every model"),
    ("model_args", "key=value,... merged into every model's model_args"),
    ("executor", "Where workers run: local or ray"),
    ("worker_start", "How local workers start: auto, forkserver or subprocess"),
    ("ray_address", "Ray cluster address for the ray executor"),
    ("baseline", "Baseline file to compare with"),
    ("save_baseline", "Baseline file to write"),
    ("alpha", "Significance level of the regression tests"),
    ("json", "Path of the JSON report, or off"),
    ("md", "Path of the markdown summary"),
    ("html", "Path of the HTML report"),
    ("progress", "Live progress: auto, on or off"),
)


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
    resolved = settings_mod.resolve(config)
    config.stash[SETTINGS] = resolved
    config.stash[SCHEDULER] = JobScheduler(resolved)
    config.pluginmanager.register(DistevalSession(config), "disteval-session")
    if resolved.baseline is not None or resolved.save_baseline is not None:
        from pytest_disteval.regression.baseline import BaselinePlugin

        config.pluginmanager.register(BaselinePlugin(config, resolved), "disteval-baseline")
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_disteval.xdist_hooks import XdistHooks

        config.pluginmanager.register(XdistHooks(), "disteval-xdist")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite(file_path):
        return SuiteFile.from_parent(parent, path=file_path)  # type: ignore[no-any-return]
    return None


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    # -n auto: one xdist worker per group. xdist asks before pytest_configure, so the
    # settings are resolved here on their own; None leaves xdist's default (CPUs)
    from pytest_disteval.plan.planner import groups_available

    return groups_available(settings_mod.resolve(config).gpu)


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
