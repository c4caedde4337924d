"""Issue 15's suite keys: parsed with file:line errors, resolved per entry, in the entry key,
through the worker spec, overridden run-wide; chat renderings carried to the scorer."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.suite import overrides
from pytest_disteval.suite.model import SuiteError, TaskEntry
from pytest_disteval.suite.parse import parse_suite
from pytest_disteval.worker.spec import RunSpec, WorkerSpec

MODEL = """\
disteval: 1
models:
  - name: m
    backend: hf
    model_args: {{pretrained: {path}}}
{model}
tasks:
{tasks}
"""


def suite(tmp_path: Path, model: str = "", tasks: str = "  - task: t\n    thresholds: {acc: 0}",
          defaults: str = "") -> Any:
    text = MODEL.format(path=tmp_path, model=textwrap.indent(textwrap.dedent(model), "    "),
                        tasks=tasks)
    if defaults:
        text = text.replace("models:\n", f"defaults:\n{textwrap.indent(defaults, '  ')}\nmodels:\n")
    return parse_suite(text, tmp_path / "s.yaml")


def entries(tmp_path: Path, **kw: str) -> list[TaskEntry]:
    return suite(tmp_path, **kw).models[0].tasks  # type: ignore[no-any-return]


def problems(tmp_path: Path, **kw: str) -> list[str]:
    with pytest.raises(SuiteError) as info:
        suite(tmp_path, **kw)
    return str(info.value).splitlines()


def test_defaults_leave_the_settings_and_so_the_cache_keys_as_they_were(tmp_path: Path) -> None:
    (entry,) = entries(tmp_path)
    assert entry.settings() == {"num_fewshot": None, "limit": None, "fewshot_seed": 1234}
    # written at lm-eval's defaults: the same settings, the same key
    (same,) = entries(tmp_path, model="random_seed: 0\nbootstrap_iters: 100000\n"
                                      "apply_chat_template: false")
    assert same.settings() == entry.settings()


def test_model_keys_reach_every_entry_and_an_entry_overrides_them(tmp_path: Path) -> None:
    got = entries(tmp_path, model="""\
        apply_chat_template: true
        system_instruction: Be brief.
        random_seed: 7
        numpy_random_seed: 8
        torch_random_seed: 9
        fewshot_seed: 3
        bootstrap_iters: 10
        metadata: {a: 1}
        gen_kwargs: {max_gen_toks: 8, temperature: 0}
        max_batch_size: 32""", tasks="""\
  - task: t
    thresholds: {acc: 0}
  - task: u
    apply_chat_template: chatml
    fewshot_as_multiturn: false
    fewshot_random_seed: 5
    metadata: {b: 2}
    gen_kwargs: {max_gen_toks: 16}
    thresholds: {acc: 0}""")
    assert got[0].settings() == {
        "num_fewshot": None, "limit": None, "fewshot_seed": 3, "apply_chat_template": True,
        "system_instruction": "Be brief.", "fewshot_as_multiturn": True, "random_seed": 7,
        "numpy_random_seed": 8, "torch_random_seed": 9, "bootstrap_iters": 10,
        "metadata": {"a": 1}}
    # the model's gen_kwargs reach the worker as the spec's: absent from settings
    assert got[1].settings() == {
        "num_fewshot": None, "limit": None, "fewshot_seed": 5, "apply_chat_template": "chatml",
        "system_instruction": "Be brief.", "random_seed": 7, "numpy_random_seed": 8,
        "torch_random_seed": 9, "bootstrap_iters": 10, "metadata": {"a": 1, "b": 2},
        "gen_kwargs": {"max_gen_toks": 16, "temperature": 0}}


def test_defaults_section_is_below_the_model(tmp_path: Path) -> None:
    (entry,) = entries(tmp_path, model="random_seed: 2", defaults="random_seed: 1\n"
                       "system_instruction: S\nfewshot_random_seed: 4")
    assert entry.settings()["random_seed"] == 2
    assert entry.settings()["system_instruction"] == "S"
    assert entry.fewshot_seed == 4


@pytest.mark.parametrize(("model", "tasks", "expected"), [
    ("random_seed: 1.5", None, "s.yaml:6: models[0].random_seed: 1.5 is not valid: an integer "
                               "from 0 to 4294967295 (lm-eval's --random_seed)"),
    ("torch_random_seed: '3'", None, "s.yaml:6: models[0].torch_random_seed: '3' is not valid"),
    ("numpy_random_seed: -1", None, "s.yaml:6: models[0].numpy_random_seed: -1 is not valid"),
    ("apply_chat_template: 1", None, "s.yaml:6: models[0].apply_chat_template: 1 is not valid: "
                                     "true, false, or the name of one of the tokenizer's"),
    ("system_instruction: [a]", None, "s.yaml:6: models[0].system_instruction: ['a'] is not "
                                      "valid: a string"),
    ("bootstrap_iters: -2", None, "s.yaml:6: models[0].bootstrap_iters: -2 is not valid"),
    ("metadata: 3", None, "s.yaml:6: models[0].metadata: 3 is not valid: a mapping"),
    ("max_batch_size: 0", None, "s.yaml:6: models[0].max_batch_size: 0 is not valid"),
    ("", "  - task: t\n    fewshot_as_multiturn: true\n    thresholds: {acc: 0}",
     "s.yaml:9: tasks[0].fewshot_as_multiturn: true needs a chat template"),
    ("", "  - task: t\n    fewshot_seed: 1\n    fewshot_random_seed: 1\n    thresholds: {acc: 0}",
     "s.yaml:10: tasks[0].fewshot_random_seed: is another spelling of fewshot_seed"),
    ("", "  - task: t\n    gen_kwargs: [1]\n    thresholds: {acc: 0}",
     "s.yaml:9: tasks[0].gen_kwargs: [1] is not valid: a mapping"),
    ("", "  - task: t\n    fewshot_random_seed: x\n    thresholds: {acc: 0}",
     "s.yaml:9: tasks[0].fewshot_random_seed: 'x' is not valid: a non-negative integer"),
])
def test_bad_values_are_file_line_errors(tmp_path: Path, model: str, tasks: str | None,
                                         expected: str) -> None:
    kw = {"model": model} if tasks is None else {"model": model, "tasks": tasks}
    lines = problems(tmp_path, **kw)
    assert any(line.startswith(f"{tmp_path}/{expected}") for line in lines), lines


def test_every_key_changes_the_entry_key(tmp_path: Path) -> None:
    (base,) = entries(tmp_path)
    s = suite(tmp_path)
    job = EvalJob(s.models[0], s)
    keys = {job.entry_key(base)}
    for key, value in [("apply_chat_template", True), ("apply_chat_template", "tool_use"),
                       ("system_instruction", "x"), ("random_seed", 1),
                       ("numpy_random_seed", 1), ("torch_random_seed", 1),
                       ("bootstrap_iters", 0), ("metadata", {"a": 1}),
                       ("gen_kwargs", {"max_gen_toks": 3})]:
        keys.add(job.entry_key(dataclasses.replace(base, evaluation={key: value})))
    multiturn_off = {"apply_chat_template": True, "fewshot_as_multiturn": False}
    keys.add(job.entry_key(dataclasses.replace(base, evaluation=multiturn_off)))
    assert len(keys) == 11
    before = job.model_key
    bigger = EvalJob(dataclasses.replace(s.models[0], max_batch_size=8), s)
    assert bigger.model_key != before


def test_run_wide_overrides_win_over_the_suite(tmp_path: Path) -> None:
    s = suite(tmp_path, model="apply_chat_template: true\nsystem_instruction: A",
              tasks="  - task: t\n    fewshot_as_multiturn: true\n    thresholds: {acc: 0}")
    off = overrides.Overrides(apply_chat_template=False, system_instruction="B")
    (entry,) = overrides.apply(s, off).models[0].tasks
    # no template: multiturn goes with it, as lm-eval has it only with a template
    assert entry.eval_setting("apply_chat_template") is False
    assert entry.eval_setting("fewshot_as_multiturn") is False
    assert entry.settings()["system_instruction"] == "B"
    assert overrides.parse_chat_template("chatml", "--x") == "chatml"
    assert overrides.parse_chat_template("TRUE", "--x") is True
    with pytest.raises(pytest.UsageError, match="--x: give true, false or the name"):
        overrides.parse_chat_template(" ", "--x")


def test_the_worker_spec_carries_every_key_to_simple_evaluate(tmp_path: Path) -> None:
    (entry,) = entries(tmp_path, model="apply_chat_template: true\nrandom_seed: 7\n"
                       "metadata: {a: 1}\nbootstrap_iters: 0")
    run = RunSpec(entry.settings(), ())
    spec = WorkerSpec(error_path=tmp_path / "e", meta_path=tmp_path / "m", max_batch_size=4,
                      gen_kwargs={"max_gen_toks": 2}, runs=(run,))
    back = WorkerSpec.from_json(spec.to_json())
    assert back.max_batch_size == 4
    assert back.runs[0].evaluate_kwargs(back.gen_kwargs) == {
        "num_fewshot": None, "limit": None, "fewshot_random_seed": 1234, "random_seed": 7,
        "numpy_random_seed": 1234, "torch_random_seed": 1234,
        "gen_kwargs": {"max_gen_toks": 2}, "apply_chat_template": True,
        "system_instruction": None, "fewshot_as_multiturn": True, "bootstrap_iters": 0}
    assert back.runs[0].metadata == {"a": 1}
    with pytest.raises(ValueError, match="'max_batch_size' is a positive integer"):
        WorkerSpec.from_dict({**spec.to_dict(), "max_batch_size": 0})


class _ChatLM:
    """A real LM's chat side, for ShardLM to delegate to."""

    tokenizer_name = "tok"
    world_size = 1
    calls = 0

    def apply_chat_template(self, history: list[dict[str, str]], add: bool = True) -> str:
        self.calls += 1
        return "|".join(m["content"] for m in history) + (">" if add else "")

    def chat_template(self, name: bool | str = False) -> str:
        return "T"

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        return [(-1.0, True) for _ in requests]


def test_the_scorer_renders_chat_prompts_as_the_shards_did(tmp_path: Path) -> None:
    from pytest_disteval.store.responses import ResponseStore
    from pytest_disteval.worker.sharding import MissingResponses, ReplayLM, ShardLM

    history = [{"role": "user", "content": "1+2="}]
    with ResponseStore(tmp_path / "r.sqlite") as store:
        real = _ChatLM()
        shard = ShardLM(real, store, "mk", 0, 2)  # type: ignore[arg-type]
        assert shard.apply_chat_template(history) == "1+2=>"
        assert shard.apply_chat_template(history, False) == "1+2="
        assert shard.tokenizer_name == "tok" and real.calls == 2
        replay = ReplayLM(store, "mk")
        with pytest.raises(MissingResponses, match="no chat rendering"):
            replay.apply_chat_template(history)  # not flushed yet: the shard is running
        shard.flush_renders()
        assert replay.apply_chat_template(history) == "1+2=>"
        assert replay.apply_chat_template(history, False) == "1+2="
        assert replay.tokenizer_name == "tok"
        with pytest.raises(MissingResponses):
            replay.apply_chat_template([{"role": "user", "content": "other"}])
        # another model key sees nothing of this one's
        with pytest.raises(MissingResponses):
            ReplayLM(store, "other").apply_chat_template(history)


def test_the_worker_refuses_a_template_name_as_lm_evals_cli_does() -> None:
    from pytest_disteval.worker.main import _check_template
    from pytest_disteval.worker.spec import BadRequest

    class Named:
        def chat_template(self, name: bool | str = False) -> str:
            if name not in (True, "default"):
                raise ValueError(f"The specified chat template '{name}' is not available.")
            return "T"

    _check_template(Named(), True)
    _check_template(Named(), "default")
    with pytest.raises(BadRequest, match="apply_chat_template 'rag': The specified chat "
                                         "template 'rag' is not available"):
        _check_template(Named(), "rag")

    class Bare:
        def chat_template(self, name: bool | str = False) -> None:
            return None  # lm-eval's TemplateLM for a tokenizer without a template

    _check_template(Bare(), False)
    with pytest.raises(BadRequest, match="apply_chat_template True: the model's tokenizer has "
                                         "no chat template"):
        _check_template(Bare(), True)
