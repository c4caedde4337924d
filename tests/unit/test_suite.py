"""Suite parsing and validation: every class of mistake names file, line and key."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from pytest_disteval.suite.checks import SCHEMA_PATH
from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import is_suite, load_suite

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def suites(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "suites" / "tasks", tmp_path / "tasks")
    shutil.copytree(ROOT / "suites" / "data", tmp_path / "data")
    return tmp_path


def suite_file(suites: Path, body: str, name: str = "s.yaml") -> Path:
    path = suites / name
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


GOOD = """\
disteval: 1
include: [tasks]
models:
  - name: m
    backend: hf
    model_args: {pretrained: some/model}
    batch_size: 8
    budgets: {wall_time: 90s}
tasks:
  - task: arith_mc
    num_fewshot: 3
    thresholds:
      acc: 0.5
      acc_norm: {min: 0.4, tolerance: 2}
  - task: arith_gen
    thresholds:
      exact_match,strict-match: {min: 0.1, max: 1.0}
"""


def problems_of(path: Path) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return str(info.value)


def test_good_suite_parses(suites: Path) -> None:
    suite = load_suite(suite_file(suites, GOOD))
    (model,) = suite.models
    assert model.name == "m" and model.backend == "hf" and model.batch_size == 8
    assert [e.name for e in model.tasks] == ["arith_mc", "arith_gen"]
    mc = model.tasks[0]
    assert mc.num_fewshot == 3 and mc.local is not None
    acc, acc_norm = mc.thresholds
    assert (acc.metric, acc.min, acc.max, acc.direction_given) == ("acc,none", 0.5, None, False)
    assert (acc_norm.min, acc_norm.tolerance) == (0.4, 2.0)
    assert acc.loc.line == 13
    strict = model.tasks[1].thresholds[0]
    assert strict.metric == "exact_match,strict-match" and strict.max == 1.0
    assert model.budgets[0].limit == 90.0


def test_unknown_key_with_did_you_mean(suites: Path) -> None:
    text = GOOD.replace("    batch_size: 8", "    batch_sise: 8")
    message = problems_of(suite_file(suites, text))
    assert "s.yaml:7: models[0].batch_sise: unknown key (did you mean 'batch_size'?)" in message
    assert "valid keys here:" in message


def test_wrong_types_name_what_is_valid(suites: Path) -> None:
    text = GOOD.replace("batch_size: 8", "batch_size: big").replace("num_fewshot: 3",
                                                                    "num_fewshot: three")
    message = problems_of(suite_file(suites, text))
    assert "s.yaml:7: models[0].batch_size: 'big' is not valid: a positive integer, 'auto'" \
        in message
    assert "s.yaml:11: tasks[0].num_fewshot: 'three' is not valid: a non-negative integer" \
        in message


def test_threshold_on_a_metric_the_task_does_not_produce(suites: Path) -> None:
    text = GOOD.replace("      acc: 0.5", "      acc_nrom: 0.5")
    message = problems_of(suite_file(suites, text))
    assert ("s.yaml:13: tasks[0].thresholds.acc_nrom: the task does not produce metric "
            "'acc_nrom' (did you mean 'acc_norm'?); it produces: acc, acc_norm") in message


def test_filter_must_exist_too(suites: Path) -> None:
    text = GOOD.replace("exact_match,strict-match", "exact_match,none")
    message = problems_of(suite_file(suites, text))
    assert "exact_match,flexible-extract, exact_match,strict-match" in message


def test_missing_include_path(suites: Path) -> None:
    message = problems_of(suite_file(suites, GOOD.replace("[tasks]", "[tasks, nowhere]")))
    assert "s.yaml:2: include[1]: directory 'nowhere' does not exist" in message


def test_bad_backend_duration_and_yaml(suites: Path) -> None:
    text = GOOD.replace("backend: hf", "backend: vlm").replace("90s", "90 seconds")
    message = problems_of(suite_file(suites, text))
    assert "models[0].backend: 'vlm' is not a backend (did you mean 'vllm'?)" in message
    broken = problems_of(suite_file(suites, "disteval: 1\nmodels: [\n", "b.yaml"))
    # the line where the unclosed '[' opens, not the one where libyaml gave up
    assert broken.startswith(f"{suites / 'b.yaml'}:2: ") and "YAML syntax error" in broken


def test_budget_duration_error(suites: Path) -> None:
    message = problems_of(suite_file(suites, GOOD.replace("90s", "ninety")))
    assert "s.yaml:8: models[0].budgets.wall_time: 'ninety' is not a duration" in message


def test_all_problems_are_listed_at_once(suites: Path) -> None:
    text = GOOD.replace("batch_size: 8", "batchsize: 8").replace("acc: 0.5", "accc: 0.5")
    assert len(problems_of(suite_file(suites, text)).splitlines()) == 2


def test_duplicate_names_and_bounds(suites: Path) -> None:
    text = GOOD + "  - task: arith_mc\n    thresholds: {acc: {min: 0.9, max: 0.1}}\n"
    message = problems_of(suite_file(suites, text))
    assert "task entry name 'arith_mc' is used twice" in message
    assert "min 0.9 is above max 0.1" in message


def test_model_paths_resolve_against_the_suite_file(suites: Path) -> None:
    (suites / "weights").mkdir()
    suite = load_suite(suite_file(suites, GOOD.replace("some/model", "./weights")))
    assert suite.models[0].model_args["pretrained"] == str((suites / "weights").resolve())
    message = problems_of(suite_file(suites, GOOD.replace("some/model", "./gone")))
    assert "models[0].model_args.pretrained: path './gone' does not exist" in message


def test_lower_is_better_shorthand_is_a_maximum(suites: Path) -> None:
    (suites / "tasks" / "ppl.yaml").write_text(
        "task: ppl\noutput_type: loglikelihood_rolling\ndataset_path: json\n")
    text = GOOD.replace("task: arith_gen", "task: ppl").replace(
        "exact_match,strict-match: {min: 0.1, max: 1.0}", "word_perplexity: 20")
    threshold = load_suite(suite_file(suites, text)).models[0].tasks[1].thresholds[0]
    assert (threshold.min, threshold.max) == (None, 20.0)


def test_which_yaml_files_are_suites(suites: Path) -> None:
    assert is_suite(suite_file(suites, GOOD))
    assert not is_suite(suites / "tasks" / "arith_mc.yaml")
    ci = suite_file(suites, "on: push\njobs:\n  test:\n    runs-on: ubuntu\n", "ci.yml")
    assert not is_suite(ci)
    assert not is_suite(suite_file(suites, "disteval: 1\n", "notes.txt"))


def test_examples_validate_against_the_json_schema(suites: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in [*sorted((ROOT / "suites").glob("*.yaml")), suite_file(suites, GOOD)]:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = yaml.safe_load(GOOD.replace("batch_size: 8", "batch_sise: 8"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_limits_follow_lm_eval(suites: Path) -> None:
    for bad in ("0", "1.0", "1.5", "-3"):
        text = GOOD.replace("    num_fewshot: 3", f"    limit: {bad}")
        assert "limit: " in problems_of(suite_file(suites, text))
    for good in ("1", "0.5", "200"):
        load_suite(suite_file(suites, GOOD.replace("    num_fewshot: 3", f"    limit: {good}")))


def test_entries_need_thresholds_and_distinct_names_per_model(suites: Path) -> None:
    text = GOOD.replace("    budgets: {wall_time: 90s}\n", """\
    budgets: {wall_time: 90s}
    tasks:
      - {task: arith_gen, name: g, thresholds: {acc: 0.1}}
      - {task: arith_mc, name: g, thresholds: {acc: 0.1}}
      - {task: arith_mc, name: bare}
""")
    message = problems_of(suite_file(suites, text))
    assert "task entry name 'g' is used twice" in message
    assert "task entry 'bare' has no thresholds: nothing would be tested" in message
