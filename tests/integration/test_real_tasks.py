"""lm-eval's own task configs through the plugin: gsm8k, an MMLU subject, hellaswag, humaneval.

Each is a local task that ``include``s the built-in YAML and reads a few local documents
in the dataset's schema (tests/realtasks.py), so the real prompts, filters (gsm8k's
strict-match and flexible-extract regexes), preprocessing (hellaswag's process_docs)
and metrics (humaneval's code_eval, which runs the model's code) run offline. Every
score equals ``lm_eval.simple_evaluate`` on the same task, called directly, at dp 1 and
at dp 3 (shards and a scoring worker), on the CPU in float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import Demo
from helpers import model_block, write_suite
from realtasks import write_real_tasks

pytestmark = pytest.mark.slow

TASKS = ("gsm8k_local", "mmlu_abstract_algebra_local", "hellaswag_local", "humaneval_local")
# the demo model's context is 128 tokens: 3 new tokens leave the prompts room
GEN_KWARGS = {"max_gen_toks": 3}

SUITE = """\
disteval: 1
include: [real_tasks]
models:
{model}    gen_kwargs: {{max_gen_toks: 3}}
    confirm_run_unsafe_code: true   # humaneval_local runs what the model writes
tasks:
  - task: gsm8k_local
    thresholds: {{"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}}
  - task: mmlu_abstract_algebra_local
    thresholds: {{acc: 0.0}}
  - task: hellaswag_local
    thresholds: {{acc: 0.0, acc_norm: 0.0}}
  - task: humaneval_local
    thresholds: {{"pass@1,create_test": 0.5}}
"""

DIRECT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, out, gen_kwargs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
tasks = sys.argv[5:]
results = lm_eval.simple_evaluate(
    model="hf", model_args={"pretrained": pretrained, "dtype": "float32"}, tasks=tasks,
    device="cpu", batch_size=64, gen_kwargs=json.loads(gen_kwargs),
    confirm_run_unsafe_code=True, fewshot_random_seed=1234,
    task_manager=TaskManager(include_path=tasks_dir, include_defaults=False), log_samples=True)
samples = {t: [{"doc_id": s["doc_id"], "filter": s["filter"], "doc": s["doc"],
                "filtered_resps": s["filtered_resps"]} for s in results["samples"][t]]
           for t in tasks}
json.dump({"results": results["results"], "n-samples": results["n-samples"],
           "samples": samples}, open(out, "w"), default=str)
"""


@pytest.fixture
def real(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory,
         monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    write_real_tasks(pytester.path / "suites")
    # code_eval is copied into a modules cache: a temporary one, not the user's
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
    # the plugin sets HF_ALLOW_CODE_EVAL for the consenting job itself (worker/main.py)
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    return pytester


def direct(demo: Demo, suites: Path, out: Path, tasks: tuple[str, ...]) -> dict[str, Any]:
    """lm-eval called directly, in a process of its own, in the suites' working directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_EVALUATE_OFFLINE": "1", "HF_ALLOW_CODE_EVAL": "1"}
    subprocess.run([sys.executable, "-c", DIRECT, str(demo.good), str(suites / "real_tasks"),
                    str(out), json.dumps(GEN_KWARGS), *tasks],
                   cwd=suites, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def junit_scores(report: Path) -> dict[tuple[str, str], float]:
    scores = {}
    for case in ET.parse(report).iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "score" in props:
            scores[(case.get("classname", "").rsplit(".", 1)[-1], str(props["metric"]))] = \
                float(str(props["score"]))
    return scores


def test_built_in_task_configs_score_as_simple_evaluate(real: pytest.Pytester, demo: Demo,
                                                        tmp_path: Path) -> None:
    write_suite(real, "real", SUITE.format(model=model_block("tiny", demo.good)))
    run = real.runpytest("suites", "--junitxml=report.xml", "--disteval-dir=base")
    run.assert_outcomes(passed=6)
    ours = json.loads((real.path / "base/results/suites/real/tiny.json").read_text())
    theirs = direct(demo, real.path / "suites", tmp_path / "direct.json", TASKS)
    for task in TASKS:
        assert ours["results"][task] == theirs["results"][task], task
        assert ours["n-samples"][task] == theirs["n-samples"][task], task
    # the items gate those very numbers
    gated = junit_scores(real.path / "report.xml")
    assert len(gated) == 6
    for (task, metric), score in gated.items():
        assert score == theirs["results"][task][metric]

    # the built-in configs ran, not look-alikes: gsm8k's two regex filters...
    gsm8k = theirs["results"]["gsm8k_local"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(gsm8k)
    by_filter: dict[str, list[Any]] = {}
    for sample in theirs["samples"]["gsm8k_local"]:
        by_filter.setdefault(sample["filter"], []).append(sample["filtered_resps"])
    # strict-match wants "#### N", which the model never writes; flexible-extract takes a
    # number from whatever it wrote
    assert by_filter["strict-match"] == [["[invalid]"]] * 4
    assert all(r[0] != "[invalid]" and r[0].strip("-").isdigit()
               for r in by_filter["flexible-extract"])
    # ... hellaswag's process_docs (" [title]" -> ". ", other [..] dropped) ...
    queries = [s["doc"]["query"] for s in theirs["samples"]["hellaswag_local"]]
    assert queries == ["Sums: 12+30. =", "Sums: 7+5 =", "Sums: 40+9 ="]
    # ... MMLU's four lettered choices, and humaneval's code_eval, which ran the code:
    # two completions pass their tests and one (a sub that adds) fails
    assert theirs["n-samples"]["mmlu_abstract_algebra_local"]["effective"] == 4
    assert ours["results"]["humaneval_local"]["pass@1,create_test"] == pytest.approx(2 / 3)


def test_dp_3_shards_and_the_scoring_worker_run_the_unsafe_task_with_consent(
        real: pytest.Pytester, demo: Demo, tmp_path: Path) -> None:
    write_suite(real, "real", SUITE.format(model=model_block("tiny", demo.good)).split(
        "  - task: gsm8k_local")[0] + "  - task: humaneval_local\n"
        "    thresholds: {\"pass@1,create_test\": 0.5}\n"
        "  - task: hellaswag_local\n    thresholds: {acc: 0.0, acc_norm: 0.0}\n")
    run = real.runpytest("suites", "--disteval-dir=base", "--gpus", "0", "--dp", "3")
    run.assert_outcomes(passed=3)
    starts = [json.loads(line) for line in (real.path / "base/workers.jsonl").read_text()
              .splitlines() if json.loads(line)["event"] == "start"]
    assert sorted(s["mode"] for s in starts) == ["score", "shard", "shard", "shard"]
    ours = json.loads((real.path / "base/results/suites/real/tiny.json").read_text())
    theirs = direct(demo, real.path / "suites", tmp_path / "direct.json",
                    ("humaneval_local", "hellaswag_local"))
    for task in ("humaneval_local", "hellaswag_local"):
        assert ours["results"][task] == theirs["results"][task], task


def test_an_unsafe_task_collection_cannot_see_fails_its_items_with_the_key_to_add(
        project: pytest.Pytester, demo: Demo) -> None:
    # a local tag is no local task name: collection lets it pass, lm-eval refuses its task
    (project.path / "suites" / "tasks" / "arith_unsafe.yaml").write_text(
        "include: arith_gen.yaml\ntask: arith_unsafe\ntag: [unsafe_tag]\nunsafe_code: true\n")
    write_suite(project, "tagged", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("tiny", demo.good) + "tasks:\n  - task: unsafe_tag\n"
                "    limit: 2\n    thresholds: {\"exact_match,strict-match\": 0.0}\n")
    result = project.runpytest("suites", "--disteval-dir=base")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*Attempted to run task: arith_unsafe which is marked as unsafe.*In the suite: add "
        "'confirm_run_unsafe_code: true' to the model or to the task entry*"])


CHAT_DIRECT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
results = lm_eval.simple_evaluate(
    model="hf", model_args={"pretrained": pretrained, "dtype": "float32"},
    tasks=["gsm8k_cot_llama_local"], device="cpu", batch_size=64,
    gen_kwargs={"max_gen_toks": 3}, apply_chat_template=True, fewshot_as_multiturn=True,
    fewshot_random_seed=1234, task_manager=TaskManager(include_path=tasks_dir,
                                                       include_defaults=False))
json.dump({"results": results["results"]}, open(out, "w"), default=str)
"""


def test_gsm8k_chat_variant_through_the_chat_template_scores_as_simple_evaluate(
        real: pytest.Pytester, tmp_path: Path) -> None:
    from realtasks import builtin_tasks

    chat = Path(__file__).resolve().parents[2] / "demo" / "models" / "tiny-arith-chat"
    suites = real.path / "suites"
    # lm-eval's chat-style gsm8k (its few-shot examples are inline): only a test split
    (suites / "real_tasks" / "gsm8k_cot_llama_local.yaml").write_text(
        f"include: {builtin_tasks() / 'gsm8k' / 'gsm8k-cot-llama.yaml'}\n"
        "task: gsm8k_cot_llama_local\ndataset_path: json\ndataset_name: null\n"
        "dataset_kwargs:\n  data_files: {test: data/gsm8k_test.jsonl}\n")
    write_suite(real, "chat", "disteval: 1\ninclude: [real_tasks]\nmodels:\n"
                + model_block("chat", chat) + "    gen_kwargs: {max_gen_toks: 3}\n"
                "    apply_chat_template: true\n    fewshot_as_multiturn: true\n"
                "tasks:\n  - task: gsm8k_cot_llama_local\n    thresholds: "
                "{\"exact_match,strict-match\": 0.0, \"exact_match,flexible-extract\": 0.0}\n")
    run = real.runpytest("suites", "--disteval-dir=base", "--disteval-samples")
    run.assert_outcomes(passed=2)
    ours = json.loads((real.path / "base/results/suites/chat/chat.json").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", CHAT_DIRECT, str(chat), str(suites / "real_tasks"),
                    str(tmp_path / "direct.json")], cwd=suites, env=env, check=True,
                   capture_output=True)
    theirs = json.loads((tmp_path / "direct.json").read_text())
    task = "gsm8k_cot_llama_local"
    assert ours["results"][task] == theirs["results"][task]
    lines = [json.loads(line) for line in
             (real.path / "base/results/suites/chat/chat.samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 4  # four documents, two filters
    for line in lines:
        # the template's marks: its BOS text first, and each few-shot answer an assistant
        # turn (" answer\n\n") before the next user turn
        assert line["prompt"].startswith("<bos>"), line["prompt"][:40]
        assert " There are 15 trees originally." in line["prompt"]
        # the last user turn is the document, after the few-shot turns
        assert line["prompt"].endswith(
            "Problem: " + line["doc"]["question"] + "\nYour response should end with \"The "
            "final answer is [answer]\" where [answer] is the response to the problem.\n")
