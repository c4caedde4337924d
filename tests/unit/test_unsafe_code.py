"""confirm_run_unsafe_code: which tasks run model code, decided at collection without lm-eval."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import parse_suite
from pytest_disteval.suite.unsafe import builtin_tasks_dir, builtin_unsafe, unsafe_reason
from pytest_disteval.worker.main import allow_code_eval, unsafe_hint
from pytest_disteval.worker.spec import RunSpec, WorkerSpec

BUILTIN = builtin_tasks_dir()
pytestmark = pytest.mark.skipif(BUILTIN is None, reason="lm-eval is not installed")

PASS = "{'pass@1,create_test': 0.0}"  # humaneval's metric under its filter
MODEL = """\
disteval: 1
include: [tasks]
models:
  - name: m
    backend: hf
    model_args: {pretrained: some-org/some-model}
"""


def suite(tmp_path: Path, body: str, *, local: str | None = None) -> Path:
    """A suite file with a ``tasks/`` folder (holding ``local``, a task YAML, if given)."""
    (tmp_path / "tasks").mkdir(exist_ok=True)
    if local is not None:
        (tmp_path / "tasks" / "code_local.yaml").write_text(local, encoding="utf-8")
    path = tmp_path / "s.yaml"
    path.write_text(MODEL + body, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as info:
        parse_suite(path.read_text(), path)
    return str(info.value).splitlines()


def humaneval_local() -> str:
    assert BUILTIN is not None
    return (f"include: {BUILTIN / 'humaneval' / 'humaneval.yaml'}\ntask: code_local\n"
            "dataset_path: json\ndataset_kwargs: {data_files: {test: code.jsonl}}\n")


def test_the_built_in_index_finds_lm_evals_unsafe_tasks_groups_and_none_else() -> None:
    reasons = builtin_unsafe(BUILTIN)
    # said in the file itself, inherited through include (humaneval_plus, the longproc
    # tasks from _default_yaml_0.5k), and groups of them (two levels for longproc)
    for name in ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus_instruct", "cruxeval_input",
                 "longproc_countdown_0.5k", "humaneval_infilling", "longproc"):
        assert name in reasons, name
    assert reasons["humaneval_plus"] == "lm-eval's tasks/humaneval/humaneval.yaml says " \
                                        "unsafe_code: true"
    assert reasons["longproc"].startswith("group 'longproc' runs 'longproc_")
    for name in ("mmlu", "gsm8k", "hellaswag", "mmlu_abstract_algebra", "arc_easy", "leaderboard"):
        assert name not in reasons, name


def test_deciding_imports_neither_lm_eval_nor_torch() -> None:
    before = set(sys.modules)
    assert builtin_unsafe.__wrapped__(BUILTIN)["mbpp"]  # the index built afresh, not cached
    assert unsafe_reason("mbpp", None) and unsafe_reason("gsm8k", None) is None
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & {"lm_eval", "torch", "transformers", "datasets"}


def test_a_built_in_unsafe_task_without_consent_is_refused_with_the_key_to_add(
        tmp_path: Path) -> None:
    path = suite(tmp_path, "tasks:\n  - task: gsm8k\n    thresholds: {exact_match: 0.0}\n"
                           f"  - task: humaneval\n    thresholds: {PASS}\n")
    (line,) = problems(path)
    assert line.startswith(f"{path}:10: tasks[1].task: task 'humaneval' runs code the model "
                           "writes (lm-eval's tasks/humaneval/humaneval.yaml says unsafe_code: "
                           "true); lm-eval runs it only with consent: to run it, add "
                           "'confirm_run_unsafe_code: true' to model 'm' (models[0], line 4) "
                           "or to this task entry")


def test_a_local_task_including_an_unsafe_yaml_is_unsafe_too(tmp_path: Path) -> None:
    path = suite(tmp_path, f"tasks:\n  - task: code_local\n    thresholds: {PASS}\n",
                 local=humaneval_local())
    (line,) = problems(path)
    assert line.startswith(f"{path}:8: tasks[0].task: task 'code_local' runs code the model "
                           f"writes ({tmp_path / 'tasks' / 'code_local.yaml'} says unsafe_code: "
                           "true (through its include of ")
    assert "humaneval/humaneval.yaml)" in line


def test_consent_at_model_or_entry_level_reaches_the_settings_and_the_cache_key(
        tmp_path: Path) -> None:
    tasks = (f"    tasks:\n      - task: code_local\n        thresholds: {PASS}\n"
             "      - task: gsm8k\n        thresholds: {exact_match: 0.0}\n")
    path = suite(tmp_path, "    confirm_run_unsafe_code: true\n" + tasks,
                 local=humaneval_local())
    consented = parse_suite(path.read_text(), path)
    code, gsm8k = consented.models[0].tasks
    assert consented.models[0].confirm_run_unsafe_code
    assert code.settings()["confirm_run_unsafe_code"] is True
    assert gsm8k.settings()["confirm_run_unsafe_code"] is True
    # the entry's own false wins over its model's true, on a task that needs none
    path.write_text(path.read_text().replace(
        "thresholds: {exact_match: 0.0}",
        "thresholds: {exact_match: 0.0}\n        confirm_run_unsafe_code: false"))
    mixed = parse_suite(path.read_text(), path)
    assert "confirm_run_unsafe_code" not in mixed.models[0].tasks[1].settings()
    # entry level alone
    path = suite(tmp_path, tasks.replace(f"{PASS}\n",
                                         f"{PASS}\n        confirm_run_unsafe_code: true\n"))
    entry = parse_suite(path.read_text(), path).models[0].tasks[0]
    assert entry.confirm_run_unsafe_code
    # a consenting entry is another cache key than the same entry without consent
    job = EvalJob(consented.models[0], consented)
    plain = mixed.models[0].tasks[1]
    assert job.entry_identity(gsm8k)["settings"] != job.entry_identity(plain)["settings"]
    assert job.entry_key(gsm8k) != job.entry_key(plain)


@pytest.mark.parametrize(("where", "body", "line", "key"), [
    ("model", "    confirm_run_unsafe_code: yes please\n"
              "tasks:\n  - task: gsm8k\n    thresholds: {exact_match: 0.0}\n",
     7, "models[0].confirm_run_unsafe_code"),
    ("entry", "tasks:\n  - task: gsm8k\n    confirm_run_unsafe_code: 1\n"
              "    thresholds: {exact_match: 0.0}\n", 9, "tasks[0].confirm_run_unsafe_code"),
])
def test_a_value_that_is_not_a_bool_is_refused(tmp_path: Path, where: str, body: str, line: int,
                                               key: str) -> None:
    path = suite(tmp_path, body)
    (message,) = problems(path)
    assert message.startswith(f"{path}:{line}: {key}: ")
    assert "is not valid: true or false" in message


def test_an_entry_saying_false_on_an_unsafe_task_is_refused_at_its_own_line(
        tmp_path: Path) -> None:
    path = suite(tmp_path, "    confirm_run_unsafe_code: true\n    tasks:\n"
                           "      - task: mbpp\n        confirm_run_unsafe_code: false\n"
                           "        thresholds: {pass_at_1: 0.0}\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:10: models[0].tasks[0].task: task 'mbpp' runs code")
    assert "remove the entry or set confirm_run_unsafe_code: true" in message


def test_a_local_group_of_an_unsafe_built_in_task_is_unsafe(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "g.yaml").write_text("group: code_group\ntask:\n  - gsm8k\n"
                                               "  - mbpp_plus\n")
    from pytest_disteval.suite.localtasks import TaskIndex

    index = TaskIndex([tmp_path / "tasks"])
    why = unsafe_reason("code_group", index)
    assert why is not None and why.startswith("group 'code_group' (") and "'mbpp_plus'" in why
    assert unsafe_reason("gsm8k", index) is None


def test_a_function_metric_is_checked_after_the_run_not_at_collection(tmp_path: Path) -> None:
    # humaneval's metric is `!function utils.pass_at_k`, which reports pass@1: only the run
    # knows what a function returns, so collection takes any metric name for it
    path = suite(tmp_path, "    confirm_run_unsafe_code: true\n    tasks:\n"
                           "      - task: code_local\n        thresholds: {pass_at_7: 0.5}\n",
                 local=humaneval_local())
    (entry,) = parse_suite(path.read_text(), path).models[0].tasks
    assert [t.metric for t in entry.thresholds] == ["pass_at_7,none"]


def _spec(tmp_path: Path, *consents: bool) -> WorkerSpec:
    runs = tuple(RunSpec({"num_fewshot": None, "limit": None, "fewshot_seed": 1234,
                          **({"confirm_run_unsafe_code": True} if c else {})}, ())
                 for c in consents)
    return WorkerSpec(error_path=tmp_path / "e.json", meta_path=tmp_path / "m.json", runs=runs)


def test_the_worker_allows_code_eval_only_where_the_suite_consents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    allow_code_eval(_spec(tmp_path, False, False))
    assert "HF_ALLOW_CODE_EVAL" not in os.environ
    allow_code_eval(_spec(tmp_path, False, True))
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "1"
    # the user's own value stays (0: code_eval refuses, as the user asked)
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "0")
    allow_code_eval(_spec(tmp_path, True))
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "0"
    # the consent travels in the spec the scheduler writes and the worker reads
    back = WorkerSpec.from_json(_spec(tmp_path, True).to_json())
    assert back.runs[0].settings["confirm_run_unsafe_code"] is True


def test_lm_evals_refusal_is_told_in_the_suites_terms() -> None:
    refusal = ValueError("Attempted to run task: t which is marked as unsafe. Set "
                         "confirm_run_unsafe_code=True to run this task.")
    hint = unsafe_hint(refusal)
    assert hint is not None and hint.startswith("Attempted to run task: t which is marked")
    assert "add 'confirm_run_unsafe_code: true' to the model or to the task entry" in hint
    assert unsafe_hint(ValueError("something else")) is None
    assert unsafe_hint(KeyError("marked as unsafe")) is None


def test_of_two_includes_the_later_one_wins_as_in_lm_eval(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "safe.yaml").write_text("unsafe_code: false\noutput_type: generate_until\n")
    (tasks / "unsafe.yaml").write_text("unsafe_code: true\n")
    (tasks / "a.yaml").write_text("include: [safe.yaml, unsafe.yaml]\ntask: a\n")
    (tasks / "b.yaml").write_text("include: [unsafe.yaml, safe.yaml]\ntask: b\n")
    from pytest_disteval.suite.localtasks import TaskIndex

    index = TaskIndex([tasks])
    assert unsafe_reason("a", index) is not None
    assert unsafe_reason("b", index) is None
