"""Each backend turns a layout into lm-eval model_args and a launch command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_disteval.backends import BACKENDS
from pytest_disteval.plan.layout import Layout, LayoutError
from pytest_disteval.suite.checks import SCHEMA_PATH
from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import load_suite

BASE = {"pretrained": "/models/llama", "dtype": "bfloat16", "gpu_memory_utilization": 0.8}


def test_hf_spreads_a_group_with_a_device_map_and_keeps_user_keys() -> None:
    hf = BACKENDS["hf"]
    assert "parallelize" not in hf.model_args(BASE, Layout(1, 1, 8), on_gpu=True)
    args = hf.model_args({**BASE, "max_memory_per_gpu": "70GiB"}, Layout(4, 1, 2), on_gpu=True)
    assert args["parallelize"] is True and args["max_memory_per_gpu"] == "70GiB"
    assert "parallelize" not in hf.model_args(BASE, Layout(4, 1, 2), on_gpu=False)
    assert not hf.splits_heads
    assert hf.launch("py", Layout(4, 1, 2)) == ["py", "-m", "pytest_disteval.worker"]


def test_vllm_gets_tp_and_pp_and_leaves_dp_to_the_shards() -> None:
    args = BACKENDS["vllm"].model_args(BASE, Layout(4, 2, 2), on_gpu=True)
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"],
            args["data_parallel_size"]) == (4, 2, 1)
    assert args["gpu_memory_utilization"] == 0.8  # passed through
    assert BACKENDS["vllm"].splits_heads


def test_sglang_tp_size() -> None:
    args = BACKENDS["sglang"].model_args(BASE, Layout(2, 1, 4), on_gpu=True)
    assert (args["tp_size"], args["dp_size"]) == (2, 1)


def test_nemo_runs_one_rank_per_gpu_under_torchrun() -> None:
    nemo = BACKENDS["nemo_lm"]
    args = nemo.model_args(BASE, Layout(2, 2, 1), on_gpu=True)
    assert (args["tensor_model_parallel_size"], args["pipeline_model_parallel_size"],
            args["devices"]) == (2, 2, 4)
    assert nemo.launch("py", Layout(2, 2, 1)) == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "pytest_disteval.worker"]


def test_lm_eval_knows_each_backend_name() -> None:
    # in a process of its own: lm-eval's imports do not survive pytester's module snapshots
    code = ("import sys, lm_eval.models; from lm_eval.api.registry import MODEL_REGISTRY; "
            "print([n for n in sys.argv[1:] if n not in MODEL_REGISTRY])")
    names = [b.lm_eval_model for b in BACKENDS.values()]
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_layout_key_in_model_args_must_agree_with_the_layout() -> None:
    vllm = BACKENDS["vllm"]
    assert vllm.model_args({**BASE, "tensor_parallel_size": 4}, Layout(4, 1, 1), True)
    with pytest.raises(LayoutError, match="model_args.tensor_parallel_size=2 disagrees"):
        vllm.model_args({**BASE, "tensor_parallel_size": 2}, Layout(4, 1, 1), True)
    with pytest.raises(LayoutError, match="sglang: .* no pipeline parallel"):
        BACKENDS["sglang"].model_args(BASE, Layout(2, 2, 1), True)


def test_nemo_suites_name_the_checkpoint_by_path(tmp_path: Path) -> None:
    (tmp_path / "model.nemo").write_bytes(b"")
    suite = tmp_path / "s.yaml"
    suite.write_text("disteval: 1\nmodels:\n  - backend: nemo_lm\n"
                     "    model_args: {path: model.nemo}\n    budgets: {wall_time: 1h}\n")
    (model,) = load_suite(suite).models
    assert model.weights == str(tmp_path / "model.nemo") and model.name == "model.nemo"
    suite.write_text(suite.read_text().replace("path:", "pretrained:"))
    with pytest.raises(SuiteError, match="at least 'path'"):
        load_suite(suite)


def test_the_suite_schema_and_the_model_key_agree_with_the_backend_facts() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    model = schema["$defs"]["model"]["properties"]
    # the JSON schema cannot read backends.py: it must list the same names and weights keys
    assert tuple(model["backend"]["enum"]) == tuple(BACKENDS)
    assert {next(iter(c["required"])) for c in model["model_args"]["anyOf"]} == {
        b.weights_key for b in BACKENDS.values()}
    for backend in BACKENDS.values():
        # a version the doctor shows also keys the results: an upgrade is never reused
        assert set(backend.distributions) <= set(backend.score_packages), backend.name
