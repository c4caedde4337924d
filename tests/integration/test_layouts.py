"""Layouts and plans through the plugin, on a fake GPU inventory (no GPU needed)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from conftest import Demo
from helpers import plan_suite

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


# float16: the dtype the memory estimates below (the 70B model's GiB per replica) assume
suite = functools.partial(plan_suite, dtype="float16")


@pytest.fixture
def big_model(tmp_path: Path) -> Path:
    path = tmp_path / "llama-70b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_70B))
    return path


def test_gpus_8_tp_4_gives_two_groups_of_four(project: pytest.Pytester, big_model: Path) -> None:
    suite(project, big_model, "vllm")
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB:H100",
                               "--gpus", "8", "--tp", "4")
    result.stdout.fnmatch_lines([
        "*disteval plan (GPU inventory: fake)*",
        "job suites/plan.yaml::m  backend=vllm  tp=4 pp=1 dp=2",
        "  model: 6*B parameters, about 1* GiB per replica*",
        "  replica 0: GPUs 0,1,2,3 (H100)",
        "    $ CUDA_VISIBLE_DEVICES=0,1,2,3 * -m pytest_disteval.worker <spec>",
        "  replica 1: GPUs 4,5,6,7 (H100)",
        "  model_args: *tensor_parallel_size=4,pipeline_parallel_size=1,data_parallel_size=1",
        "  tasks: arith_mc",
    ])
    assert result.ret == 0 and "passed" not in result.stdout.str()


def test_tp_auto_picks_the_smallest_group_that_holds_the_model(
        project: pytest.Pytester, big_model: Path) -> None:
    suite(project, big_model, "vllm", model_keys="tp: auto")
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GB")
    result.stdout.fnmatch_lines(["job suites/plan.yaml::m  backend=vllm  tp=4 pp=1 dp=2"])
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x40GB")
    result.stdout.fnmatch_lines(["job suites/plan.yaml::m  backend=vllm  tp=8 pp=1 dp=1"])


def test_a_model_that_cannot_fit_is_refused_before_anything_starts(
        project: pytest.Pytester, big_model: Path) -> None:
    suite(project, big_model, "vllm", model_keys="tp: auto")
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x16GB")
    result.stdout.fnmatch_lines(["  cannot lay out: the model needs about 16* GB*per replica*"
                                 "a GPU has 16* GB*"])
    result = project.runpytest("--disteval-fake-gpus", "8x16GB")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cannot lay out model 'm': the model needs about 16*"])


def test_tp_must_divide_attention_heads_for_vllm(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good, "vllm")
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB",
                               "--tp", "3")
    result.stdout.fnmatch_lines(["  cannot lay out: tp=3 does not divide the model's 4 "
                                 "attention heads; valid tp values with 8 granted*: 1, 2, 4"])


def test_groups_must_fit_the_gpus_granted(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good)
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "8x80GiB",
                               "--gpus", "4", "--tp", "2", "--dp", "4")
    result.stdout.fnmatch_lines(["  cannot lay out: tp=2 x pp=1 x dp=4 needs 8 GPUs; 4 granted "
                                 "(--gpus 4); at most dp=2 fits"])


def test_bad_option_values_are_usage_errors(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, demo.good)
    result = project.runpytest("--tp", "four")
    result.stderr.fnmatch_lines(["ERROR: --tp: 'four' is not valid: a whole number >= 1 or "
                                 "'auto'"])
    result = project.runpytest("--disteval-fake-gpus", "8 GPUs")
    result.stderr.fnmatch_lines(["ERROR: --disteval-fake-gpus: *"])


def test_a_missing_backend_skips_with_the_install_command_or_fails_if_required(
        project: pytest.Pytester, demo: Demo) -> None:
    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("sglang") is not None:
        pytest.skip("sglang is installed here")
    suite(project, demo.good, "sglang")
    result = project.runpytest("-rs", "--gpus", "0")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*backend 'sglang' is not installed*install it with: "
                                 "pip install 'sglang?all?'*"])
    suite(project, demo.good, "sglang", model_keys="required: true")
    project.runpytest("--gpus", "0").assert_outcomes(failed=1)


def test_automatic_dp_counts_only_groups_inside_one_domain(project: pytest.Pytester,
                                                           demo: Demo) -> None:
    suite(project, demo.good)
    # 6 GPUs in two NVLink domains of 3: groups of 2 can only be made once per domain
    result = project.runpytest("--disteval-plan", "--disteval-fake-gpus", "6x80GB/3",
                               "--tp", "2")
    result.stdout.fnmatch_lines([
        "job suites/plan.yaml::m  backend=hf  tp=2 pp=1 dp=2",
        "  dp=2: groups stay inside NVLink/PCIe domains",
        "  replica 0: GPUs 0,1 *",
        "  replica 1: GPUs 3,4 *",
    ])
