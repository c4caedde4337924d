"""Budget logic over constructed job records and timelines; counting over a fake model.

The GPU path runs the real GpuSampler against a fake NVML (same interface as pynvml);
the real NVML one is tests/integration/test_gpu.py.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_disteval import DistevalImbalanceWarning
from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.monitor import GpuSampler
from pytest_disteval.items import budgets
from pytest_disteval.jobs import record as jobrecord
from pytest_disteval.plan.layout import Layout
from pytest_disteval.suite.checks import SCHEMA_PATH
from pytest_disteval.suite.model import SuiteError
from pytest_disteval.suite.parse import parse_suite
from pytest_disteval.worker.counting import RequestCounter, leaf_map

from fakenvml import FakeNvml

# ------------------------------------------------------------------ verdicts


def test_floor_and_ceiling_say_which_way_and_by_how_much() -> None:
    floor = budgets.check("tokens_per_s", 1000.0, 812.0, "1000/s")
    assert not floor.passed and floor.margin == -188.0
    assert floor.lines == ["tokens_per_s = 812/s, required >= 1000/s, short by 188/s"]
    assert budgets.check("tokens_per_s", 1000.0, 1200.0).passed
    ceiling = budgets.check("host_rss", 2**30, 1.5 * 2**30, "1GiB")
    assert ceiling.lines == ["host_rss = 1.5 GiB, required <= 1 GiB, over by 512 MiB"]
    # written in powers of 10: shown in powers of 10
    assert budgets.check("gpu_memory", 20e9, 21e9, "20GB").lines == [
        "gpu_memory = 21 GB, required <= 20 GB, over by 1 GB"]
    assert budgets.check("gpu_util", 40.0, 35.5, "40%").lines == [
        "gpu_util = 35.5%, required >= 40.0%, short by 4.5%"]
    assert budgets.check("wall_time", 60.0, 60.0).passed  # the bound itself passes


RECORD: dict[str, Any] = {
    "wall_s": 12.0, "load_s": 3.0, "eval_s": 8.0, "requests": 80, "tokens": 800,
    "requests_per_s": 10.0, "tokens_per_s": 100.0, "host_peak_rss_bytes": 2**30,
    "tasks": {"arith_mc": {"eval_s": 5.0, "requests": 60, "tokens": 600}},
    "gpu": None, "gpu_unavailable": "NVML unavailable (NVMLError: Driver Not Loaded)",
    "cached": False, "partial": False,
}


@pytest.mark.parametrize(("kind", "value"), [
    ("wall_time", 12.0), ("load_time", 3.0), ("requests_per_s", 10.0),
    ("tokens_per_s", 100.0), ("host_rss", 2**30)])
def test_measure_reads_the_job_record(kind: str, value: float) -> None:
    assert budgets.measure(kind, RECORD) == value


def test_measure_per_task_and_the_skip_reasons() -> None:
    assert budgets.measure("task_time", RECORD, "arith_mc") == 5.0
    with pytest.raises(budgets.Unmeasured, match="'arith_gen' was not evaluated"):
        budgets.measure("task_time", RECORD, "arith_gen")
    for kind in ("gpu_memory", "group_gpu_memory", "gpu_util"):
        # without NVML: the sampler's own reason
        with pytest.raises(budgets.Unmeasured, match=r"^NVML unavailable \(NVMLError"):
            budgets.measure(kind, RECORD)
    with pytest.raises(budgets.Unmeasured, match="only part of the job ran"):
        budgets.measure("wall_time", dict(RECORD, partial=True))
    assert budgets.measure("task_time", dict(RECORD, partial=True), "arith_mc") == 5.0
    with pytest.raises(budgets.Unmeasured, match="no tokenizer"):
        budgets.measure("tokens_per_s", dict(RECORD, tokens_per_s=None))
    with pytest.raises(budgets.Unmeasured, match="from the store, and no measurements were"):
        budgets.measure("wall_time", None)


def test_an_old_store_record_has_only_the_wall_time() -> None:
    record = jobrecord.recorded({"wall_s": 9.5})
    assert record is not None and record["cached"] is True
    assert budgets.measure("wall_time", record) == 9.5
    with pytest.raises(budgets.Unmeasured, match="load_time was not measured"):
        budgets.measure("load_time", record)
    assert jobrecord.recorded({}) is None


# ------------------------------------------------------------------ GPU path


def _sampled(tmp_path: Path, name: str, util: dict[int, list[int]]) -> Path:
    with GpuSampler(sorted(util), period=0.005, nvml=FakeNvml(util)) as sampler:
        deadline = time.monotonic() + 5
        while len(sampler.times) < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
    path = tmp_path / f"gpu-{name}.json"
    path.write_text(json.dumps(sampler.timeline()))
    return path


def test_gpu_figures_from_sampled_timelines_and_the_imbalance(tmp_path: Path) -> None:
    path = _sampled(tmp_path, "job", {0: [100], 1: [100, 0]})
    gpu, reason = jobrecord.gpu_section([path])
    assert reason is None and gpu is not None
    assert gpu["per_device"]["0"] == {"mean_util_pct": 100.0, "peak_mem_bytes": 10 * 2**30}
    assert 40 <= gpu["per_device"]["1"]["mean_util_pct"] <= 60
    assert gpu["per_device"]["1"]["peak_mem_bytes"] == 4 * 2**30
    assert gpu["group_peak_mem_bytes"] == 14 * 2**30  # summed at the same sample
    assert gpu["timelines"] == [str(path)]
    assert gpu["imbalance"].startswith("group [0, 1]: GPU 0 at 100% mean utilisation, GPU 1 at")
    record = dict(RECORD, gpu=gpu)
    assert budgets.measure("gpu_memory", record) == 10 * 2**30
    assert budgets.measure("group_gpu_memory", record) == 14 * 2**30
    verdict = budgets.check("gpu_memory", 8 * 2**30, budgets.measure("gpu_memory", record),
                            "8GiB", budgets.detail("gpu_memory", record, "8GiB"))
    assert verdict.lines == ["gpu_memory = 10 GiB, required <= 8 GiB, over by 2 GiB",
                             "peak memory per GPU: GPU 0 10 GiB, GPU 1 4 GiB"]
    util = budgets.measure("gpu_util", record)
    assert util == gpu["mean_util_pct"] and 70 <= util <= 80
    assert budgets.detail("gpu_util", record)[1].startswith("imbalance: group [0, 1]")


def test_balanced_groups_raise_no_imbalance(tmp_path: Path) -> None:
    paths = [_sampled(tmp_path, "a", {0: [90], 1: [80]}), _sampled(tmp_path, "b", {2: [20]})]
    gpu, _ = jobrecord.gpu_section(paths)
    assert gpu is not None and gpu["imbalance"] is None
    assert set(gpu["per_device"]) == {"0", "1", "2"}
    assert gpu["mean_util_pct"] == round((90 + 80 + 20) / 3, 1)


def test_a_timeline_without_samples_gives_the_samplers_reason(tmp_path: Path) -> None:
    path = tmp_path / "gpu-x.json"
    path.write_text(json.dumps({"t": [], "gpus": {"0": {"util_pct": [], "mem_used_bytes": []}},
                                "unavailable": "NVML unavailable (NVMLError: Unknown Error)"}))
    assert jobrecord.gpu_section([path]) == (None, "NVML unavailable (NVMLError: Unknown Error)")


def test_the_record_of_a_sharded_run_sums_its_shards(tmp_path: Path) -> None:
    for i, (requests, tokens, eval_s) in enumerate([(30, 300, 4.0), (20, 250, 5.0)]):
        (tmp_path / f"meta-shard{i}.json").write_text(json.dumps({"timing": {
            "load_s": 2.0 + i, "host_peak_rss_bytes": 2**30 * (i + 1),
            "runs": [{"tasks": ["t"], "eval_s": eval_s}],
            "tasks": {"t": {"eval_s": eval_s, "requests": requests, "tokens": tokens}}}}))
    (tmp_path / "meta.json").write_text(json.dumps({"timing": {  # the scoring worker
        "load_s": 0.0, "host_peak_rss_bytes": 2**29, "runs": [{"eval_s": 1.0}], "tasks": {}}}))
    _sampled(tmp_path, "shard0", {0: [50]})
    _sampled(tmp_path, "shard1", {1: [60]})
    gpus = [GPU(i, f"GPU-{i}", "H200", 141 * 2**30, 141 * 2**30) for i in (0, 1)]
    record = jobrecord.build(layout=Layout(1, 1, 2), pack=1, on_gpu=True,
                             groups=[[gpus[0]], [gpus[1]]], run_dir=tmp_path, wall_s=11.0,
                             partial=False, no_gpu_reason="-")
    assert record["layout"] == {"tp": 1, "pp": 1, "dp": 2, "pack": 1}
    assert record["device"] == "cuda" and record["groups"] == [[0], [1]]
    assert record["gpus"][1] == {"index": 1, "uuid": "GPU-1", "name": "H200",
                                 "memory_total_bytes": 141 * 2**30}
    assert record["tasks"] == {"t": {"eval_s": 5.0, "requests": 50, "tokens": 550}}
    assert (record["requests"], record["tokens"], record["eval_s"]) == (50, 550, 5.0)
    assert record["requests_per_s"] == 10.0 and record["tokens_per_s"] == 110.0
    assert record["load_s"] == 3.0 and record["host_peak_rss_bytes"] == 2 * 2**30
    assert record["gpu"]["per_device"]["1"]["mean_util_pct"] == 60.0
    assert record["gpu"]["imbalance"] is None  # one GPU per group: nothing to compare


def test_the_imbalance_warning_is_a_filterable_pytest_warning() -> None:
    assert issubclass(DistevalImbalanceWarning, pytest.PytestWarning)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DistevalImbalanceWarning)
        warnings.warn(DistevalImbalanceWarning("ignored"), stacklevel=1)  # no error


# ------------------------------------------------------------------ counting


class FakeLM:
    """A model whose tokenizer splits on spaces; answers are canned."""

    def __init__(self) -> None:
        self.tokenizer = lambda texts, add_special_tokens: {
            "input_ids": [t.split() for t in texts]}

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        time.sleep(0.02)
        return [(-1.0, True)] * len(requests)

    def generate_until(self, requests: list[Any]) -> list[Any]:
        return ["four five"] * len(requests)


def _req(task: str, *args: Any) -> Any:
    return SimpleNamespace(task_name=task, args=args)


def test_counts_requests_tokens_and_seconds_per_entry() -> None:
    lm = FakeLM()
    counter = RequestCounter()
    counter.install(lm)
    # one call mixing two tasks of a group entry and a plain entry
    lm.loglikelihood([_req("sub_a", "one two", " three"), _req("sub_b", "one", " two"),
                      _req("plain", "a b c d e", " f")])
    lm.generate_until([_req("plain", "x y", {"until": ["\n"]})])
    owner = leaf_map([("grp-entry", "grp"), ("plain-entry", "plain")],
                     {"grp": ["sub_a", "sub_b"]})
    counts = counter.take(lm, owner)
    assert counts["grp-entry"].requests == 2 and counts["grp-entry"].tokens == 5
    # 6 tokens of context + continuation, then prompt 2 + generated 2
    assert counts["plain-entry"].requests == 2 and counts["plain-entry"].tokens == 10
    # the mixed call's time goes by token share: 5 to 6
    a, b = counts["grp-entry"].model_s, counts["plain-entry"].model_s
    assert a > 0.0 and b > a
    assert counter.take(lm, owner) == {}  # taken once


def test_without_a_tokenizer_tokens_are_unknown_not_estimated() -> None:
    lm = FakeLM()
    del lm.tokenizer
    counter = RequestCounter()
    counter.install(lm)
    lm.loglikelihood([_req("t", "a b", " c")])
    counts = counter.take(lm, leaf_map([("t", "t")], {}))
    assert counts["t"].requests == 1 and counts["t"].tokens is None


# ------------------------------------------------------------------ suites


def test_the_schema_lists_every_budget_kind() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    assert tuple(schema["$defs"]["budgets"]["properties"]) == tuple(budgets.KINDS)
    assert tuple(schema["$defs"]["task_budgets"]["properties"]) == budgets.TASK_KINDS


SUITE = """\
disteval: 1
models:
  - backend: hf
    model_args: {pretrained: some/model}
    budgets:
      wall_time: 1h30m
      tokens_per_s: 50 req/s
      host_rss: 20
      gpu_util: 40
      gpu_memory: 20G
      throughput: 5/s
tasks:
  - task: t
    thresholds: {acc: 0.5}
    budgets: {task_time: 2 minutes, wall_time: 1m}
"""


def test_budget_errors_name_file_line_key_and_valid_forms(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(SUITE, tmp_path / "s.yaml")
    lines = str(info.value).splitlines()
    s = str(tmp_path / "s.yaml")
    assert lines == [
        f"{s}:7: models[0].budgets.tokens_per_s: '50 req/s': 'req' is not what this rate "
        "counts (valid words before the slash: tok, tokens, or none); e.g. 1000/s, 600/min, "
        "1000 tok/s (tokens_per_s takes a rate, e.g. 1000/s, 1000 tok/s)",
        f"{s}:8: models[0].budgets.host_rss: 20 is not a size: write a number and a unit, "
        "e.g. '20GiB' or '20GB' (units: GiB, MiB, KiB, TiB (powers of 2) or GB, MB, KB, TB "
        "(powers of 10) or B) (host_rss takes a size, e.g. 16GiB, 500MB)",
        f"{s}:9: models[0].budgets.gpu_util: 40 is not a percentage; write a number from 0 to "
        "100 with a percent sign, e.g. 40% (gpu_util takes a percentage, e.g. 40%)",
        f"{s}:10: models[0].budgets.gpu_memory: invalid size '20G': unit 'G' is ambiguous or "
        "unknown; use one of GiB, MiB, KiB, TiB (powers of 2) or GB, MB, KB, TB (powers of "
        "10) or B (gpu_memory takes a size, e.g. 20GiB, 20GB)",
        f"{s}:11: models[0].budgets.throughput: unknown key; valid keys here: wall_time, "
        "load_time, task_time, requests_per_s, tokens_per_s, gpu_memory, group_gpu_memory, "
        "host_rss, gpu_util",
        f"{s}:15: tasks[0].budgets.task_time: '2 minutes' is not a duration; write a number of "
        "seconds or numbers with units (ms, s, m, min, h), e.g. 90s, 30m, 1.5h, 1h30m "
        "(task_time takes a duration, e.g. 90s, 2m)",
        f"{s}:15: tasks[0].budgets.wall_time: unknown key (did you mean 'task_time'?); valid "
        "keys here: task_time",
    ]


def test_budgets_parse_into_bounds(tmp_path: Path) -> None:
    text = SUITE.replace("50 req/s", "1000 tok/s").replace("host_rss: 20", "host_rss: 20GB") \
        .replace("gpu_util: 40", "gpu_util: 40%").replace("20G\n", "20GiB\n") \
        .replace("      throughput: 5/s\n", "").replace("2 minutes, wall_time: 1m", "2m")
    (model,) = parse_suite(text, tmp_path / "s.yaml").models
    limits = {b.kind: b.limit for b in model.budgets}
    assert limits == {"wall_time": 5400.0, "tokens_per_s": 1000.0, "host_rss": 20e9,
                      "gpu_util": 40.0, "gpu_memory": 20 * 2**30}
    (entry,) = model.tasks
    assert [(b.kind, b.limit, b.loc.line) for b in entry.budgets] == [("task_time", 120.0, 14)]
