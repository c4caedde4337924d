"""The checks a job passes before its worker starts (jobs/precheck.py) and the lookups they
share with the doctor (plan/weights.py, suite/builtin_tasks.py): where weights are found,
which task names lm-eval knows. lm-eval's own index is compared in
tests/integration/test_precheck_runs.py (it imports lm-eval)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_disteval.executors.base import WorkerRun
from pytest_disteval.jobs import launch
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.launch import OFFLINE_ENV
from pytest_disteval.jobs.precheck import precheck
from pytest_disteval.plan.sizing import local_model_dir
from pytest_disteval.plan.weights import find_weights
from pytest_disteval.suite.builtin_tasks import task_names, unknown_task
from pytest_disteval.suite.parse import parse_suite

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "suites" / "tasks"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def job_of(tmp_path: Path, pretrained: str, tasks: list[str], backend: str = "hf",
           workdir: Path = ROOT / "suites") -> EvalJob:
    key = "path" if backend == "nemo_lm" else "pretrained"
    entries = "".join(
        f"  - task: {t}\n    name: {t}-{i}\n    thresholds: "
        + ("{'exact_match,strict-match': 0.5}\n" if t == "arith_gen" else "{acc: 0.5}\n")
        for i, t in enumerate(tasks))
    text = (f"disteval: 1\ninclude: [{TASKS}]\nworkdir: {workdir}\nmodels:\n"
            f"  - name: m\n    backend: {backend}\n    model_args: {{{key}: {pretrained}}}\n"
            f"tasks:\n{entries}")
    suite = parse_suite(text, tmp_path / "s.yaml")
    return EvalJob(suite.models[0], suite, list(suite.models[0].tasks))


def cache_snapshot(hub: Path, repo: str, commit: str = "abc123", ref: str = "main") -> Path:
    """A model in the HF hub cache, laid out as huggingface_hub lays it out."""
    base = hub / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    write(base / "refs" / ref, commit)
    return snap


def test_task_names_reads_what_lm_eval_registers_without_parsing(tmp_path: Path) -> None:
    write(tmp_path / "a" / "plain.yaml", "task: plain\ntag: one_tag\n")
    # generated YAMLs quote their keys; tags come from an included template (no .yaml)
    write(tmp_path / "b" / "_template_yaml", 'tag:\n- from_template\n- "second"\n')
    write(tmp_path / "b" / "quoted.yaml", '"include": "_template_yaml"\n"task": "quoted"\n')
    write(tmp_path / "b" / "flow.yml", "task: flow # a comment\ntag: [f1, 'f2']\n")
    write(tmp_path / "c" / "group.yaml", "group: grp\ntask:\n  - member_a\n  - member_b\n")
    write(tmp_path / "c" / "indented.yaml", "task: indented\ntag:\n  - ind_tag\n")
    write(tmp_path / "d" / "__pycache__" / "x.yaml", "task: ignored\n")
    # a cycle is lm-eval's error to report; here it must not hang
    write(tmp_path / "e" / "x.yaml", "include: y.yaml\ntask: cyc_x\n")
    write(tmp_path / "e" / "y.yaml", "include: x.yaml\ntask: cyc_y\n")
    names = task_names((tmp_path,))
    assert names == {"plain", "one_tag", "from_template", "second", "quoted", "flow", "f1",
                     "f2", "grp", "indented", "ind_tag", "cyc_x", "cyc_y"}


def test_an_unknown_task_names_where_it_was_looked_for_and_the_nearest_name() -> None:
    assert unknown_task("arith_mc", (TASKS,)) is None
    problem = unknown_task("arith_mcq", (TASKS,), "s.yaml:9")
    if problem is None:
        pytest.skip("lm-eval is not installed: no task name can be called unknown")
    what, fix = problem
    assert what.startswith(f"task 'arith_mcq' (s.yaml:9) is neither a local task (the suite's "
                           f"include: {TASKS}) nor one of the ")
    assert what.endswith("did you mean 'arith_mc'?")  # the suite's own task, not a built-in
    assert "lm-eval ls tasks" in fix and "include" in fix
    assert unknown_task("hellaswag", ()) is None  # a built-in task
    assert unknown_task("ai2_arc", ()) is None  # a built-in tag


def test_weights_are_found_where_the_worker_looks(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    environ = {"HF_HUB_CACHE": str(hub)}
    workdir = ROOT / "suites"
    monkeypatch.chdir(tmp_path)
    # relative to the workdir the worker runs in, not to where pytest was started
    relative = job_of(tmp_path, "demo/models/tiny-arith", ["arith_mc"], workdir=ROOT)
    assert find_weights(relative.model, ROOT, environ) == ROOT / "demo/models/tiny-arith"
    assert find_weights(relative.model, workdir, environ) is None
    legacy = job_of(tmp_path, "gpt9", ["arith_mc"])  # a hub id without an org
    assert find_weights(legacy.model, workdir, environ) is None
    snap = cache_snapshot(hub, "gpt9")
    assert find_weights(legacy.model, workdir, environ) == snap
    assert local_model_dir("gpt9", hub_cache=hub) == snap
    # a .nemo checkpoint is a path: the hub cache is never its home
    cache_snapshot(hub, "org/ckpt")
    nemo = job_of(tmp_path, "org/ckpt", ["arith_mc"], backend="nemo_lm")
    assert find_weights(nemo.model, workdir, environ) is None


def test_a_missing_model_says_offline_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    job = job_of(tmp_path, "org/absent", ["arith_mc", "arith_gen"])
    failure = precheck(job, job.entries, weights=True, environ={"HF_HUB_CACHE": str(hub)})
    assert failure is not None and failure.precheck and failure.command == []
    lines = failure.message.splitlines()
    assert lines[0] == (f"model 'm' ({tmp_path / 's.yaml'}:5) was not started: its weights "
                        "are not on this machine")
    assert lines[1] == (f"- model_args.pretrained 'org/absent': no directory "
                        f"{ROOT / 'suites/org/absent'}; as a hub id, no "
                        f"{hub / 'models--org--absent'}")
    assert lines[2] == ("  fix: where there is network: hf download org/absent (with the "
                        "same HF_HOME or HF_HUB_CACHE as pytest: the workers read that cache)")
    assert lines[3].startswith("   or: point model_args.pretrained at the model's directory")
    assert all(f"{k}=1" in lines[4] for k in OFFLINE_ENV if k.endswith("OFFLINE"))
    assert "offline on purpose" in lines[4]
    assert lines[5] == f"to check every model, task and dataset at once: pytest " \
                       f"--disteval-doctor {tmp_path / 's.yaml'}"
    # found in the cache (at the revision asked for): nothing to report
    cache_snapshot(hub, "org/absent", commit="def456", ref="v2")
    job.model.model_args["revision"] = "v2"
    assert precheck(job, job.entries, weights=True, environ={"HF_HUB_CACHE": str(hub)}) is None


def test_every_problem_of_a_job_is_told_at_once_and_each_task_once(tmp_path: Path) -> None:
    job = job_of(tmp_path, "org/absent", ["arith_mcq", "arith_mc", "arith_mcq"])
    if unknown_task("arith_mcq", (TASKS,)) is None:
        pytest.skip("lm-eval is not installed: no task name can be called unknown")
    failure = precheck(job, job.entries, weights=True, environ={"HF_HUB_CACHE": str(tmp_path)})
    assert failure is not None
    assert failure.message.splitlines()[0].endswith(
        "was not started: its weights are not on this machine, task 'arith_mcq' is unknown")
    assert failure.message.count("did you mean 'arith_mc'?") == 1
    # a backend that is missing (its items skip) or Ray (other disks): the model is not looked for
    failure = precheck(job, job.entries, weights=False, environ={"HF_HUB_CACHE": str(tmp_path)})
    assert failure is not None and "weights" not in failure.message
    assert "offline" not in failure.message
    assert precheck(job, [job.entries[1]], weights=False) is None


def test_a_worker_that_missed_a_file_offline_says_the_run_is_offline(tmp_path: Path) -> None:
    # what the precheck cannot see (a snapshot without its weights): the worker's own error
    job = job_of(tmp_path, str(ROOT / "demo/models/tiny-arith"), ["arith_mc"])
    log = write(tmp_path / "w.log", "Traceback (most recent call last):\n  ...\n")
    error = tmp_path / "error.json"
    error.write_text(json.dumps({"message": "OSError: We couldn't connect to "
                                 "'https://huggingface.co' to load the files"}))
    run = WorkerRun(["python", "-m", "pytest_disteval.worker"], 1, 1.0, False, log)
    failure = launch.failure(job, run, error, None)
    assert failure is not None and not failure.precheck
    lines = failure.message.splitlines()
    assert lines[0].startswith("worker for model 'm' failed: OSError: We couldn't connect")
    assert lines[1].startswith("the workers run offline on purpose (the plugin sets "
                               "HF_HUB_OFFLINE, HF_DATASETS_OFFLINE")
    assert "pytest --disteval-doctor" in lines[1]
    error.write_text(json.dumps({"message": "ValueError: bad config"}))
    assert launch.failure(job, run, error, None).message == (  # type: ignore[union-attr]
        "worker for model 'm' failed: ValueError: bad config")
