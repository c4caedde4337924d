"""The score an item sees is exactly what lm_eval.simple_evaluate returns directly."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SUITES, Demo
from helpers import good_model_suite, model_block, write_suite

pytestmark = pytest.mark.slow


DIRECT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, out = sys.argv[1:4]
results = lm_eval.simple_evaluate(
    model="hf", model_args={"pretrained": pretrained, "dtype": "float32"},
    tasks=["arith_mc", "arith_gen"], num_fewshot=3, limit=30, device="cpu", batch_size=64,
    task_manager=TaskManager(include_path=tasks_dir), log_samples=False)
json.dump({k: results[k] for k in ("results", "n-samples")}, open(out, "w"))
"""


def direct_simple_evaluate(demo: Demo, tmp_path: Path) -> dict[str, Any]:
    """lm-eval called directly, in a process of its own (as a user's script would)."""
    out = tmp_path / "direct.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # the task YAMLs' data_files are relative to suites/
    subprocess.run([sys.executable, "-c", DIRECT, str(demo.good), str(SUITES / "tasks"),
                    str(out)], cwd=SUITES, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_item_scores_equal_direct_simple_evaluate(project: pytest.Pytester, demo: Demo,
                                                  tmp_path: Path) -> None:
    good_model_suite(project, "eq", demo.good, """\
tasks:
  - task: arith_mc
    num_fewshot: 3
    limit: 30
    thresholds: {acc: 0.0, acc_norm: 0.0}
  - task: arith_gen
    num_fewshot: 3
    limit: 30
    thresholds: {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}
""")
    run = project.runpytest("suites", "--junitxml=report.xml")
    run.assert_outcomes(passed=4)
    ours = json.loads((project.path / ".disteval/results/suites/eq/good.json").read_text())
    theirs = direct_simple_evaluate(demo, tmp_path)
    for task in ("arith_mc", "arith_gen"):
        assert ours["results"][task] == theirs["results"][task]
        assert ours["n-samples"][task] == theirs["n-samples"][task]
        assert ours["configs"][task]["num_fewshot"] == 3
    # and the items' own numbers are those: read back from the JUnit properties
    import xml.etree.ElementTree as ET

    tree = ET.parse(project.path / "report.xml")
    for case in tree.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        task = case.get("classname", "").rsplit(".", 1)[-1]
        expected = theirs["results"][task][props["metric"]]
        assert float(props["score"]) == expected


# ------------------------------------------------- issue 15: lm-eval's evaluation keys

# a chat template in the demo tokenizer's 19 characters (anything else is <unk>): the
# system turn, each user turn after "-", each assistant turn after " "
CHAT_TEMPLATE = ("{%- for m in messages -%}"
                 "{%- if m['role'] == 'system' -%}{{ m['content'] }}{{ '\\n' }}"
                 "{%- elif m['role'] == 'user' -%}{{ '-' }}{{ m['content'] }}"
                 "{%- else -%}{{ ' ' }}{{ m['content'] }}{{ '\\n\\n' }}"
                 "{%- endif -%}{%- endfor -%}")


def chat_model(source: Path, tmp_path: Path) -> Path:
    """A copy of a demo model whose tokenizer has CHAT_TEMPLATE."""
    path = tmp_path / f"{source.name}-chat"
    shutil.copytree(source, path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2))
    return path


DIRECT_CALLS = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
pretrained, tasks_dir, calls, out = sys.argv[1:5]
model_args = {"pretrained": pretrained, "dtype": "float32"}
answers = []
for call in json.loads(calls):
    # as lm-eval's CLI builds it: --metadata merged over model_args
    manager = TaskManager(include_path=tasks_dir,
                          metadata=model_args | call.pop("metadata", {}))
    results = lm_eval.simple_evaluate(model="hf", model_args=model_args, device="cpu",
                                      task_manager=manager, log_samples=False, **call)
    answers.append({"results": results["results"], "n-samples": results["n-samples"],
                    "metadata": {t: c.get("metadata") for t, c in results["configs"].items()}})
json.dump(answers, open(out, "w"))
"""


def direct_calls(model: Path, calls: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """``lm_eval.simple_evaluate`` once per call, with exactly the keyword arguments given."""
    out = tmp_path / "direct-calls.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", DIRECT_CALLS, str(model), str(SUITES / "tasks"),
                    json.dumps(calls), str(out)], cwd=SUITES, env=env, check=True,
                   capture_output=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def junit_outcomes(path: Path) -> dict[str, int]:
    """Passed and failed items from the JUnit XML: sturdier than the terminal summary."""
    import xml.etree.ElementTree as ET

    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ET.parse(path).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        counts[{"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"] += 1
    return counts


CHAT_SUITE = """\
disteval: 1
include: [tasks]
models:
  - name: chat
    backend: hf
    model_args: {{pretrained: {model}, dtype: float32}}
    device: cpu
    batch_size: 8
    max_batch_size: 16
    timeout: 10m
    apply_chat_template: true
    system_instruction: "1"
    random_seed: 7
    numpy_random_seed: 8
tasks:
  - task: arith_mc
    num_fewshot: 3
    limit: 20
    fewshot_random_seed: 5
    bootstrap_iters: 0
    metadata: {{probe: 1}}
    thresholds: {{acc: 0.0}}
  - task: arith_gen
    num_fewshot: 3
    limit: 20
    fewshot_as_multiturn: false
    gen_kwargs: {{max_gen_toks: 6}}
    thresholds: {{"exact_match,strict-match": 0.0}}
"""

# the two simple_evaluate calls lm-eval's CLI makes for CHAT_SUITE's entries (each its
# own --seed, --metadata, ...), then the same tasks without a template: the control
COMMON = {"num_fewshot": 3, "limit": 20, "batch_size": 8, "max_batch_size": 16,
          "random_seed": 7, "numpy_random_seed": 8, "torch_random_seed": 1234}
CHAT_CALLS: list[dict[str, Any]] = [
    {**COMMON, "tasks": ["arith_mc"], "apply_chat_template": True, "system_instruction": "1",
     "fewshot_as_multiturn": True, "fewshot_random_seed": 5, "bootstrap_iters": 0,
     "metadata": {"probe": 1}},
    {**COMMON, "tasks": ["arith_gen"], "apply_chat_template": True, "system_instruction": "1",
     "fewshot_as_multiturn": False, "fewshot_random_seed": 1234,
     "gen_kwargs": {"max_gen_toks": 6}},
    {**COMMON, "tasks": ["arith_mc", "arith_gen"], "fewshot_random_seed": 5},
]


def test_chat_and_seed_keys_equal_simple_evaluate_at_dp_1_and_3(
        project: pytest.Pytester, demo: Demo, tmp_path: Path) -> None:
    # the untrained model: scores away from 0 and 1, so a changed prompt shows
    model = chat_model(demo.weak, tmp_path)
    write_suite(project, "chat", CHAT_SUITE.format(model=model))
    mc, gen, plain = direct_calls(model, [dict(c) for c in CHAT_CALLS], tmp_path)
    theirs = {"arith_mc": mc, "arith_gen": gen}
    # the template changes the prompts, so the scores: equality below means something
    assert mc["results"]["arith_mc"] != plain["results"]["arith_mc"]
    assert gen["results"]["arith_gen"] != plain["results"]["arith_gen"]
    assert mc["results"]["arith_mc"]["acc_stderr,none"] == "N/A"  # bootstrap_iters 0
    for dp in (1, 3):
        base = project.path / f"dp{dp}"
        project.runpytest("suites", f"--disteval-dir={base}", "--gpus", "0", "--dp", str(dp),
                          f"--junitxml={base}.xml")
        assert junit_outcomes(Path(f"{base}.xml"))["passed"] == 2, dp
        ours = json.loads((base / "results/suites/chat/chat.json").read_text())
        for task, direct in theirs.items():
            assert ours["results"][task] == direct["results"][task], (dp, task)
            assert ours["n-samples"][task] == direct["n-samples"][task]
        assert ours["configs"]["arith_mc"]["metadata"]["probe"] == 1
        modes = [json.loads(line)["mode"] for line in (base / "workers.jsonl").read_text()
                 .splitlines() if json.loads(line)["event"] == "start"]
        assert sorted(modes) == (["direct"] if dp == 1 else ["score", "shard", "shard", "shard"])


SAMPLED_SUITE = """\
disteval: 1
include: [tasks]
models:
  - name: sampled
    backend: hf
    model_args: {{pretrained: {model}, dtype: float32}}
    device: cpu
    batch_size: 8
    torch_random_seed: 9
    gen_kwargs: {{do_sample: true, temperature: 3.0, max_gen_toks: 4}}
tasks:
  - task: arith_gen
    num_fewshot: 3
    limit: 30
    thresholds: {{"exact_match,strict-match": 0.0}}
"""


def test_torch_seed_decides_sampled_generations_as_in_simple_evaluate(
        project: pytest.Pytester, demo: Demo, tmp_path: Path) -> None:
    # dp 1 only: at dp > 1 each shard's sampler draws for its own requests (docs/suites.md)
    write_suite(project, "sampled", SAMPLED_SUITE.format(model=demo.good))
    call = {"tasks": ["arith_gen"], "num_fewshot": 3, "limit": 30, "batch_size": 8,
            "gen_kwargs": {"do_sample": True, "temperature": 3.0, "max_gen_toks": 4}}
    nine, ten = direct_calls(demo.good, [{**call, "torch_random_seed": 9},
                                         {**call, "torch_random_seed": 10}], tmp_path)
    assert nine["results"] != ten["results"]  # the seed decides what is sampled
    project.runpytest("suites", "--gpus", "0", "--junitxml=report.xml")
    assert junit_outcomes(project.path / "report.xml")["passed"] == 1
    ours = json.loads((project.path / ".disteval/results/suites/sampled/sampled.json")
                      .read_text())
    assert ours["results"]["arith_gen"] == nine["results"]["arith_gen"]


def test_a_cpu_run_shows_the_chat_checks_before_it_evaluates(
        project: pytest.Pytester, demo: Demo, tmp_path: Path) -> None:
    model = chat_model(demo.good, tmp_path)
    write_suite(project, "plain", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("chat", model)
                + "tasks:\n  - task: arith_mc\n    limit: 4\n    thresholds: {acc: 0.0}\n")
    result = project.runpytest("suites", "--gpus", "0", "--junitxml=report.xml")
    result.stdout.fnmatch_lines([
        "*disteval preflight: 0 passed, 1 warnings, 0 failed*",
        "WARN  chat template suites/plain.yaml::chat * has a chat template*"])
    # a warning only: the entry runs, on lm-eval's default plain prompts
    assert junit_outcomes(project.path / "report.xml")["passed"] == 1


# arith_mc's and arith_gen's test split: 200 documents each (suites/data/arith_test.jsonl)
MC_IDS = [3, 17, 42, 43, 99, 120, 150, 151, 177, 198]
# what the worker draws for limit 12 with limit_seed 7, as docs/quick-look.md states it
GEN_IDS = sorted(random.Random(7).sample(range(200), 12))


@pytest.mark.parametrize("dp", [1, 3])
def test_samples_and_a_seeded_limit_equal_simple_evaluate_with_those_ids(
        project: pytest.Pytester, demo: Demo, tmp_path: Path, dp: int) -> None:
    # the untrained model: its scores on other documents would differ
    write_suite(project, "ids", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak) + f"""\
tasks:
  - task: arith_mc
    num_fewshot: 3
    samples: {list(reversed(MC_IDS))}
    thresholds: {{acc: 0.0}}
  - task: arith_gen
    limit: 12
    limit_seed: 7
    thresholds: {{"exact_match,flexible-extract": 0.0}}
""")
    run = project.runpytest("suites", "--gpus", "0", "--dp", str(dp), "--junitxml=report.xml")
    assert junit_outcomes(project.path / "report.xml") == {"passed": 2, "failed": 0,
                                                           "error": 0, "skipped": 0}
    base = project.path / ".disteval"
    ours = json.loads((base / "results/suites/ids/weak.json").read_text())
    calls = [{"tasks": ["arith_mc"], "num_fewshot": 3, "batch_size": 64,
              "samples": {"arith_mc": MC_IDS}},
             {"tasks": ["arith_gen"], "batch_size": 64, "samples": {"arith_gen": GEN_IDS}}]
    mc, gen = direct_calls(demo.weak, calls, tmp_path)
    for task, theirs in (("arith_mc", mc), ("arith_gen", gen)):
        assert ours["results"][task] == theirs["results"][task]
        assert ours["n-samples"][task] == theirs["n-samples"][task]
    assert ours["n-samples"]["arith_mc"]["effective"] == len(MC_IDS)
    assert ours["config"]["disteval"]["entries"]["arith_mc"]["partial"] is True
    # every worker of the job (the shards and the scorer at dp 3) drew the same ids
    drawn = [line for log in (base / "logs").glob("*.log")
             for line in log.read_text().splitlines() if line.startswith("[disteval] samples:")]
    assert len(drawn) == (1 if dp == 1 else dp + 1) * 2, run.stdout.str()  # two runs
    assert {json.dumps({"arith_gen": GEN_IDS}, separators=(",", ":")) in d for d in drawn} \
        == {True, False}
    assert len(set(drawn)) == 2
