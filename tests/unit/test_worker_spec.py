"""The worker spec: what the scheduler writes is what the worker reads, and a bad one is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.worker.spec import (
    EntrySpec,
    RunSpec,
    ShardSpec,
    SpecError,
    WorkerSpec,
)


def _spec(tmp_path: Path) -> WorkerSpec:
    settings = {"num_fewshot": 0, "limit": 4, "fewshot_seed": 1234}
    return WorkerSpec(
        error_path=tmp_path / "error.json", meta_path=tmp_path / "meta.json", backend="hf",
        lm_eval_model="hf", install_hint="pip install torch", model_args={"pretrained": "m"},
        batch_size=4, device="cpu", gen_kwargs=None, include_paths=(tmp_path / "tasks",),
        workdir=tmp_path, all_local=True, model_key="k" * 64,
        runs=(RunSpec(settings, (EntrySpec("arith", "e1", tmp_path / "e1.json", "arith-0"),)),))


def test_a_spec_reads_back_as_written(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    shard = replace(spec, mode="shard", responses=tmp_path / "r.sqlite",
                    shard=ShardSpec(1, 2), run_dir=tmp_path, chunk_size=64)
    score = replace(spec, mode="score", responses=tmp_path / "r.sqlite",
                    wait_for=tmp_path / "go.json", session_pid=4242)
    for each in (spec, shard, score):
        assert WorkerSpec.from_json(each.to_json()) == each
    # spec.json keeps the keys it had as a dict: the worker and tests/ read them
    data = json.loads(shard.to_json())
    assert data["shard"] == {"index": 1, "count": 2} and data["responses"].endswith("r.sqlite")
    assert data["runs"][0]["entries"][0] == {"name": "arith-0", "task": "arith",
                                             "entry_key": "e1",
                                             "path": str(tmp_path / "e1.json")}
    assert "wait_for" not in data and "session_pid" not in data  # unset: not written


def test_a_variant_leaves_the_spec_it_came_from_alone(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    shard = replace(spec, mode="shard", shard=ShardSpec(0, 2), responses=tmp_path / "r")
    assert spec.mode == "direct" and spec.shard is None and shard.runs is spec.runs
    with pytest.raises(AttributeError):
        spec.mode = "score"  # type: ignore[misc]
    assert shard.directory == tmp_path  # no run_dir: the meta file's directory
    assert replace(shard, run_dir=tmp_path / "run").directory == tmp_path / "run"


@pytest.mark.parametrize(("change", "message"), [
    ({"mode": "replay"}, "worker mode 'replay' is not one of direct, shard, score"),
    ({"mode": "score", "responses": None}, "worker mode 'score' needs 'responses'"),
    ({"mode": "shard", "shard": {"index": 2, "count": 2}}, "with 0 <= i < n, got {'index': 2"),
    ({"mode": "shard", "shard": None}, "needs 'shard': {'index': i, 'count': n}"),
    ({"error_path": None}, "needs 'error_path'"),
    ({"runs": [{"settings": {}, "entries": [{"task": "t"}]}]}, "missing 'entry_key'"),
])
def test_a_bad_spec_says_which_key_and_what_is_valid(tmp_path: Path, change: dict[str, Any],
                                                     message: str) -> None:
    data = {**_spec(tmp_path).to_dict(), "responses": str(tmp_path / "r.sqlite"), **change}
    with pytest.raises(SpecError) as info:
        WorkerSpec.from_dict(data)
    assert message in str(info.value)
