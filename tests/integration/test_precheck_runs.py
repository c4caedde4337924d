"""A missing model and an unknown task, black-box: the job fails before its worker starts,
with one message per job and no traceback, while the other suites run (issue 20 item 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_disteval.suite.builtin_tasks import builtin_task_names

from conftest import Demo
from helpers import model_block, write_suite


def test_a_missing_model_and_an_unknown_task_fail_once_per_job_and_start_nothing(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = project.path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    # a model dir that does not exist (no ./ in front: it may be a hub id too)
    write_suite(project, "ghost", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                "  - name: ghost\n    backend: hf\n"
                "    model_args: {pretrained: models/nope, dtype: float32}\n"
                "    device: cpu\n    budgets: {wall_time: 5m}\n"
                "tasks:\n  - task: arith_mc\n    limit: 5\n    thresholds: {acc: 0.0}\n"
                "  - task: arith_gen\n    limit: 5\n"
                "    thresholds: {'exact_match,strict-match': 0.0}\n")
    write_suite(project, "typo", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("typo", demo.good)
                + "tasks:\n  - task: arith_mcq\n    thresholds: {acc: 0.0}\n"
                # not good's entry: a stored one would pass (only what is to run is checked)
                "  - task: arith_mc\n    limit: 4\n    thresholds: {acc: 0.0}\n")
    write_suite(project, "good", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good)
                + "tasks:\n  - task: arith_mc\n    limit: 5\n    thresholds: {acc: 0.0}\n")
    base = project.path / ".disteval"
    result = project.runpytest("suites", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=5)
    # the failures, not the short summary: under CI=true pytest prints its lines whole
    out = result.stdout.str().split("short test summary info")[0]
    suites = project.path / "suites"
    # the missing model: told once, by the job's first item, with all the user needs
    assert out.count("was not started: its weights are not on this machine") == 1
    result.stdout.fnmatch_lines([
        "arith_mc acc: no result, model 'ghost' (suites/ghost.yaml:4) was not started: its "
        "weights are not on this machine",
        f"- model_args.pretrained 'models/nope': no directory {suites / 'models/nope'}; as a "
        f"hub id, no {hub / 'models--models--nope'}",
        "  fix: where there is network: hf download models/nope (with the same HF_HOME or "
        "HF_HUB_CACHE as pytest*",
        "   or: point model_args.pretrained at the model's directory*",
        "the workers run offline on purpose (the plugin sets HF_HUB_OFFLINE=1, "
        "HF_DATASETS_OFFLINE=1, TRANSFORMERS_OFFLINE=1*",
        "to check every model, task and dataset at once: pytest --disteval-doctor "
        "suites/ghost.yaml",
        "defined at: suites/ghost.yaml:12",
    ])
    first = "suites/ghost.yaml::ghost::arith_mc::acc"
    assert out.count(f"model 'ghost' was not started: see {first}") == 2  # arith_gen, budget
    # the unknown task: checked without lm-eval, told once, with the suite's near name
    assert out.count("is neither a local task") == 1
    result.stdout.fnmatch_lines([
        "arith_mcq acc: no result, model 'typo' (suites/typo.yaml:4) was not started: task "
        "'arith_mcq' is unknown",
        "- task 'arith_mcq' (suites/typo.yaml:10) is neither a local task (the suite's "
        f"include: {suites / 'tasks'}) nor one of the * built-in tasks, groups and tags of "
        "lm-eval 0.4.*; did you mean 'arith_mc'?",
    ])
    assert out.count("model 'typo' was not started: see suites/typo.yaml::typo::arith_mcq::acc"
                     ) == 1
    assert "Traceback" not in out and "huggingface.co" not in out
    # no worker started for either job: no log, no run directory, no line in workers.jsonl
    workers = [json.loads(line) for line in (base / "workers.jsonl").read_text().splitlines()]
    assert {w["job"] for w in workers} == {"suites/good.yaml::good"}
    assert not list((base / "logs").glob("ghost-*")) and not list((base / "logs").glob("typo-*"))
    assert sorted(p.name.split("-")[0] for p in (base / "runs").iterdir()) == ["good"]
    # the report says why, per item: the first one in full, the others point to it
    report = json.loads((base / "report.json").read_text())
    items = {i["nodeid"]: i for i in report["items"]}
    assert "hf download models/nope" in items[first]["failure"]
    assert items["suites/ghost.yaml::ghost::wall_time"]["failure"].endswith(f"see {first}")


@pytest.mark.slow
def test_the_task_names_read_without_lm_eval_are_every_name_lm_eval_knows() -> None:
    # a name missed here fails a job lm-eval would have run: compare with its own index
    names = builtin_task_names()
    if names is None:
        pytest.skip("lm-eval is not installed")
    listed = subprocess.run(
        [sys.executable, "-c", "import json; from lm_eval.tasks import TaskManager; "
         "print(json.dumps(TaskManager().all_tasks))"],
        capture_output=True, text=True, check=True, timeout=300)
    known = set(json.loads(listed.stdout.splitlines()[-1]))
    assert len(known) > 1000
    assert sorted(known - names) == []
    assert len(names - known) < 10  # a superset, barely: the worker checks the rest again
