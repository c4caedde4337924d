"""Quick look (--disteval-limit) and run-wide overrides (dtype, batch size, model_args).

One real lm-eval run with a limit is checked by one test (each run costs ~10 s on
CI); the rest are cheap: plans, usage errors, settings, pure functions.
"""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.state import SETTINGS
from pytest_disteval.suite import overrides
from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import parse_suite

from conftest import Demo
from helpers import model_block, write_suite


def two_models(project: pytest.Pytester, demo: Demo) -> None:
    # weak scores 0.15 +- 0.08 on the first 20 documents: 0.25 is missed by less than
    # 2 stderr, so it passes under the limit's tolerance and fails without it
    write_suite(project, "quick", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good, extra="budgets: {wall_time: 10m}\n"
                              "tasks:\n  - task: arith_mc\n    thresholds: {acc: 0.9}\n")
                + model_block("weak", demo.weak, extra="tasks:\n  - task: arith_mc\n"
                              "    thresholds: {acc: 0.25}\n"))


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    return {f"{case.get('classname')}::{case.get('name')}": {p.get("name", ""): p.get("value", "")
                                   for p in case.iter("property")}
            for case in ET.parse(path).iter("testcase")}


@pytest.mark.slow
def test_a_limited_run_is_partial_everywhere_and_never_answers_a_full_one(
        project: pytest.Pytester, demo: Demo) -> None:
    two_models(project, demo)
    base = project.path / ".disteval"
    result = project.runpytest_subprocess("suites", "--disteval-limit", "20",
                                          "--junitxml=quick.xml", "-rs")
    # a budget is about the whole job: a quick look skips it
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines([
        "good *arith_mc *acc *1.0000 ± 0.0000 *acc >= 0.9000 *PASS *20 (limit) *",
        "weak *arith_mc *acc *0.1500 ± 0.0819 *acc >= 0.2500 (tol 2σ) *PASS *20 (limit) *",
        "warning: weak arith_mc: n=20 documents (limit); stderr up to ±0.0819; thresholds are "
        "checked within their tolerance (2 x stderr unless the suite set one)",
        "SKIPPED ?1? suites/quick.yaml:*: --disteval-limit 20: a budget is measured on the "
        "whole job; run without the limit to check it",
    ])
    (weak,) = [p for name, p in junit_properties(project.path / "quick.xml").items()
               if "weak" in name]
    assert weak["partial"] == "True" and weak["limit"] == "20" and weak["n_samples"] == "20"
    assert "tolerance 2 x stderr = 0.1638" in weak["bound"]
    assert weak["limit_note"].startswith("n=20 documents (limit): stderr ±0.0819")
    results = json.loads((base / "results" / "suites" / "quick" / "weak.json").read_text())
    assert results["config"]["disteval"]["partial"] is True
    assert results["config"]["disteval"]["entries"]["arith_mc"]["partial"] is True
    assert results["config"]["disteval"]["entries"]["arith_mc"]["settings"]["limit"] == 20

    # the full run is not answered from the limited one's store entry
    result = project.runpytest_subprocess("suites", "-k", "good")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["good *arith_mc *acc *1.0000 ± 0.0000 *acc >= 0.9000 *PASS "
                                 "*200 *"])
    assert "(cached)" not in result.stdout.str() and "(limit)" not in result.stdout.str()


def parsed(tmp_path: Path, body: str = "", model_args: str = "") -> EvalJob:
    text = f"""\
disteval: 1
models:
  - name: m
    backend: vllm
    model_args: {{pretrained: org/m, dtype: bfloat16{model_args}}}
    batch_size: 8
tasks:
  - task: t
    thresholds: {{acc: 0.5, f1: {{min: 0.4, tolerance: 1}}}}
{body}"""
    suite = parse_suite(text, tmp_path / "s.yaml")
    return EvalJob(suite.models[0], suite)


def test_limit_caps_entries_and_adds_a_tolerance_unless_the_suite_set_one(
        tmp_path: Path) -> None:
    job = parsed(tmp_path, "  - task: u\n    limit: 5\n    thresholds: {acc: 0.5}\n"
                 "  - task: v\n    limit: 0.5\n    thresholds: {acc: 0.5}\n")
    overrides.apply(job.suite, overrides.Overrides(limit=20))
    t, u, v = job.model.tasks
    assert (t.limit, u.limit, v.limit) == (20, 5, 20)  # min(suite, N); a fraction gives N
    assert [th.tolerance for th in t.thresholds] == [2.0, 1.0]  # the suite's 1 is kept
    assert u.thresholds[0].tolerance == 0.0  # the suite's own limit: as written
    assert overrides.small_n_note(150, 0.03, 2.0) is None
    assert overrides.small_n_note(20, 0.0819, 2.0) == (
        "n=20 documents (limit): stderr ±0.0819; the threshold is checked with a tolerance "
        "of 2 x stderr")


def test_dtype_batch_size_and_model_args_override_every_model_and_its_key(
        tmp_path: Path) -> None:
    plain = parsed(tmp_path)
    job = parsed(tmp_path)
    overrides.apply(job.suite, overrides.Overrides(
        dtype="float16", batch_size="auto:4",
        model_args=(("gpu_memory_utilization", 0.8), ("enforce_eager", True))))
    assert job.model.model_args == {"pretrained": "org/m", "dtype": "float16",
                                    "gpu_memory_utilization": 0.8, "enforce_eager": True}
    assert job.model.batch_size == "auto:4"
    assert job.model_key != plain.model_key  # results of another dtype are never reused
    old = parsed(tmp_path, model_args=", torch_dtype: float32").suite
    old.models[0].model_args.pop("dtype")
    overrides.apply(old, overrides.Overrides(dtype="bfloat16"))
    assert old.models[0].model_args["torch_dtype"] == "bfloat16"  # the suite's own key


@pytest.mark.parametrize(("parse", "value", "message"), [
    (overrides.parse_dtype, "int3", "'int3' is not a dtype; valid: auto, float32, float, "
                                    "float16, half, bfloat16"),
    (overrides.parse_batch_size, "auto:0", "'auto:0' is not valid: a positive integer, 'auto' "
                                           "or 'auto:N'"),
    (overrides.parse_batch_size, "0", "'0' is not valid"),
    (overrides.parse_limit, "0.5", "'0.5' is not valid: a whole number of documents >= 1"),
    (overrides.parse_model_args, "max_model_len", "'max_model_len' is not key=value"),
    (overrides.parse_model_args, "tensor_parallel_size=2", "set by the layout; use --tp"),
    (overrides.parse_model_args, "pretrained=x", "names the model"),
])
def test_bad_override_values_say_what_is_valid(parse: object, value: str,
                                               message: str) -> None:
    with pytest.raises(pytest.UsageError, match="^--x: ") as info:
        parse(value, "--x")  # type: ignore[operator]
    assert message in str(info.value)


def test_model_args_values_are_read_as_lm_eval_reads_them() -> None:
    assert overrides.parse_model_args("a=1, b=0.5,c=true,d=False,e=x/y", "--x") == (
        ("a", 1), ("b", 0.5), ("c", True), ("d", False), ("e", "x/y"))


def test_precedence_command_line_over_ini_over_environment(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\ndisteval_limit = 50\ndisteval_dtype = float16\n")
    monkeypatch.setenv("DISTEVAL_LIMIT", "70")
    monkeypatch.setenv("DISTEVAL_BATCH_SIZE", "auto")
    config = pytester.parseconfigure("--disteval-limit", "20")
    assert config.stash[SETTINGS].overrides == overrides.Overrides(
        limit=20, dtype="float16", batch_size="auto")
    config = pytester.parseconfigure()
    assert config.stash[SETTINGS].overrides.limit == 50


def test_overrides_show_in_the_plan_and_bad_ones_are_usage_errors(
        project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "s", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good)
                + "tasks:\n  - task: arith_mc\n    thresholds: {acc: 0.9}\n")
    result = project.runpytest("suites", "--disteval-plan", "--disteval-fake-gpus", "1x80GiB",
                               "--disteval-dtype", "bfloat16",
                               "--disteval-model-args", "attn_implementation=eager")
    result.stdout.fnmatch_lines(["  model_args: pretrained=*tiny-arith,dtype=bfloat16,"
                                 "attn_implementation=eager"])
    result = project.runpytest("suites", "--disteval-batch-size", "big")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --disteval-batch-size: 'big' is not valid: a positive "
                                 "integer, 'auto' or 'auto:N'*"])


def test_limit_seed_and_samples_are_part_of_the_key_and_capped_by_a_quick_look(
        tmp_path: Path) -> None:
    job = parsed(tmp_path, "  - task: u\n    samples: [9, 2, 5, 7]\n    thresholds: {acc: 0.5}\n"
                 "  - task: v\n    limit: 5\n    thresholds: {acc: 0.5}\n")
    t, u, v = job.model.tasks
    assert u.samples == (2, 5, 7, 9) and u.partial and u.settings()["samples"] == [2, 5, 7, 9]
    # entries without the new keys keep the keys they had
    assert set(t.settings()) == {"num_fewshot", "limit", "fewshot_seed"}
    keys = {e.name: job.entry_key(e) for e in job.model.tasks}
    overrides.apply(job.suite, overrides.Overrides(limit=3, limit_seed=1))
    t2, u2, v2 = job.model.tasks
    assert (t2.limit, t2.limit_seed) == (3, 1)
    assert (v2.limit, v2.limit_seed) == (3, 1)
    # the suite's ids, capped: three of them, drawn with the seed
    assert u2.samples == tuple(sorted(random.Random(1).sample((2, 5, 7, 9), 3)))
    assert u2.thresholds[0].tolerance == 2.0 and u2.limit is None
    assert all(job.entry_key(e) != keys[e.name] for e in job.model.tasks)
    again = parsed(tmp_path, "  - task: u\n    samples: [9, 2, 5, 7]\n    thresholds: {acc: 0.5}\n"
                   "  - task: v\n    limit: 5\n    thresholds: {acc: 0.5}\n")
    overrides.apply(again.suite, overrides.Overrides(limit=3, limit_seed=2))
    assert job.entry_key(job.model.tasks[0]) != again.entry_key(again.model.tasks[0])


@pytest.mark.parametrize(("entry", "message"), [
    ("limit: 5\n    samples: [1, 2]", "samples: cannot be combined with 'limit'"),
    ("samples: [1, -2]", "samples: [1, -2] is not valid: a non-empty list of document ids"),
    ("samples: []", "samples: [] is not valid"),
    ("samples: [1, true]", "samples: [1, True] is not valid"),
    ("samples: [4, 1, 4]", "samples: document ids [4] appear twice"),
    ("limit_seed: 3", "limit_seed: draws 'limit' documents at random: it needs a 'limit'"),
    ("limit: 5\n    limit_seed: x", "limit_seed: 'x' is not valid: a non-negative integer"),
])
def test_bad_samples_and_limit_seeds_name_their_line(tmp_path: Path, entry: str,
                                                      message: str) -> None:
    with pytest.raises(SuiteError) as info:
        parsed(tmp_path, f"  - task: u\n    {entry}\n    thresholds: {{acc: 0.5}}\n")
    (line,) = [p for p in str(info.value).splitlines() if message in p]
    key = "limit_seed" if "limit_seed" in message else "samples"
    assert line.startswith(f"{tmp_path / 's.yaml'}:")
    # the line named is the key's own
    number = int(line.split(":")[1])
    text = parsed_text(entry).splitlines()[number - 1]
    assert text.strip().startswith(f"{key}:")


def parsed_text(entry: str) -> str:
    return f"""\
disteval: 1
models:
  - name: m
    backend: vllm
    model_args: {{pretrained: org/m, dtype: bfloat16}}
    batch_size: 8
tasks:
  - task: t
    thresholds: {{acc: 0.5, f1: {{min: 0.4, tolerance: 1}}}}
  - task: u
    {entry}
    thresholds: {{acc: 0.5}}
"""


class _Task:
    def __init__(self, n: int) -> None:
        self.eval_docs = list(range(n))


class _Tasks:
    """A TaskManager's ``load`` for a group ``g`` of two leaf tasks and a task ``t``."""

    def load(self, names: list[str]) -> dict[str, dict[str, _Task]]:
        (name,) = names
        return {"tasks": {"g_a": _Task(50), "g_b": _Task(8)} if name == "g"
                else {name: _Task(30)}}


def test_the_worker_draws_each_leaf_tasks_ids_from_its_own_size_and_the_seed(
        capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_disteval.worker.main import _doc_selection
    from pytest_disteval.worker.spec import BadRequest, EntrySpec

    entries = (EntrySpec("g", "k1", Path("a.json")), EntrySpec("t", "k2", Path("b.json")))
    settings = {"num_fewshot": None, "limit": 10, "fewshot_seed": 1234, "limit_seed": 4}
    limit, samples = _doc_selection(settings, entries, _Tasks())
    assert limit is None and samples == {
        "g_a": sorted(random.Random(4).sample(range(50), 10)),
        "g_b": list(range(8)),  # fewer documents than the limit: all of them
        "t": sorted(random.Random(4).sample(range(30), 10))}
    assert _doc_selection(settings, entries, _Tasks()) == (None, samples)  # every shard alike
    assert '[disteval] samples: {"g_a":' in capsys.readouterr().out
    fraction = _doc_selection({**settings, "limit": 0.1}, entries[:1], _Tasks())[1]
    assert fraction is not None and (len(fraction["g_a"]), len(fraction["g_b"])) == (5, 1)
    plain = {"num_fewshot": None, "limit": 7, "fewshot_seed": 1234}
    assert _doc_selection(plain, entries, _Tasks()) == (7, None)  # no seed: lm-eval's first N
    ids = {**plain, "limit": None, "samples": [1, 9, 40]}
    with pytest.raises(BadRequest) as info:
        _doc_selection(ids, (EntrySpec("g", "k", Path("a.json"), samples_at="s.yaml:7"),),
                       _Tasks())
    assert str(info.value) == ("s.yaml:7: samples: doc ids [9, 40] are out of range: task "
                               "'g_b' has 8 documents (ids 0 to 7)")
