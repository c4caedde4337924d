"""The job record: what one job measured, from its run directory.

Written into the results file under ``config.disteval.job`` and into the store
beside the recorded wall time, so budgets of a cached job can still be judged.
Its keys are a contract other tools build on (docs/budgets.md lists them); the
workers' ``meta*.json`` files and the NVML samplers' ``gpu-*.json`` timelines are
its sources. Runs in the pytest process: no torch, no lm-eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.items.budgets import IMBALANCE_POINTS
from pytest_disteval.plan.layout import Layout
from pytest_disteval.store.results import read_json_object


def _timing(path: Path) -> dict[str, Any] | None:
    meta = read_json_object(path)
    timing = meta.get("timing") if meta else None
    return timing if isinstance(timing, dict) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build(*, layout: Layout, pack: int, on_gpu: bool, groups: list[list[GPU]], run_dir: Path,
          wall_s: float | None, partial: bool, no_gpu_reason: str) -> dict[str, Any]:
    """The record of a job that ran in this session (``partial``: some entries were cached)."""
    shard_paths = sorted(run_dir.glob("meta-shard*.json"))
    shards = [t for t in map(_timing, shard_paths) if t is not None]
    direct = None if shard_paths else _timing(run_dir / "meta.json")
    model_runs = shards if shard_paths else [t for t in [direct] if t is not None]
    everyone = [t for t in [*shards, _timing(run_dir / "meta.json")] if t is not None]

    tasks: dict[str, dict[str, Any]] = {}
    for timing in model_runs:
        for name, t in (timing.get("tasks") or {}).items():
            acc = tasks.setdefault(name, {"eval_s": 0.0, "requests": 0, "tokens": 0})
            # shards run side by side: a task takes as long as its slowest shard
            acc["eval_s"] = max(acc["eval_s"], float(t.get("eval_s") or 0.0))
            acc["requests"] += int(t.get("requests") or 0)
            acc["tokens"] = (None if acc["tokens"] is None or t.get("tokens") is None
                             else acc["tokens"] + int(t["tokens"]))
    evals = [sum(float(r.get("eval_s") or 0.0) for r in t.get("runs") or []) for t in model_runs]
    eval_s = max(evals) if evals else None
    requests = sum(t["requests"] for t in tasks.values()) if tasks else None
    tokens = (None if not tasks or any(t["tokens"] is None for t in tasks.values())
              else sum(t["tokens"] for t in tasks.values()))
    loads = [v for v in (_num(t.get("load_s")) for t in model_runs) if v is not None]
    rss = [v for v in (_num(t.get("host_peak_rss_bytes")) for t in everyone) if v is not None]

    distinct: list[list[GPU]] = []
    for group in groups:
        if group and [g.uuid for g in group] not in [[g.uuid for g in d] for d in distinct]:
            distinct.append(group)
    gpus = {g.uuid: g for group in distinct for g in group}
    timelines = sorted(run_dir.glob("gpu-*.json"))
    gpu, unavailable = gpu_section(timelines) if timelines else (None, no_gpu_reason)

    def rate(n: int | None) -> float | None:
        return round(n / eval_s, 3) if n is not None and eval_s else None

    return {
        "layout": {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "pack": pack},
        "device": "cuda" if on_gpu else "cpu",
        "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name,
                  "memory_total_bytes": g.total_memory}
                 for g in sorted(gpus.values(), key=lambda g: g.index)],
        "groups": [[g.index for g in group] for group in distinct],
        "wall_s": wall_s,
        "load_s": max(loads) if loads else None,
        "eval_s": eval_s,
        "tasks": tasks,
        "requests": requests,
        "tokens": tokens,
        "requests_per_s": rate(requests),
        "tokens_per_s": rate(tokens),
        "host_peak_rss_bytes": int(max(rss)) if rss else None,
        "gpu": gpu,
        "gpu_unavailable": unavailable,
        "cached": False,
        "partial": partial,
    }


def gpu_section(paths: list[Path]) -> tuple[dict[str, Any] | None, str | None]:
    """Per-GPU mean utilisation and peak memory, group peaks and imbalance, from timelines.

    Each timeline is one replica's sampler over its group. Packed replicas sample
    the same GPU: its figures pool all their samples. None, with the reason, when
    no timeline has samples (NVML could not start).
    """
    util: dict[int, list[float]] = {}
    peak: dict[int, int] = {}
    group_peak = 0
    imbalance: list[str] = []
    reasons = []
    used = []
    for path in paths:
        timeline = read_json_object(path) or {}
        if timeline.get("unavailable"):
            reasons.append(str(timeline["unavailable"]))
        per_gpu = {int(i): g for i, g in (timeline.get("gpus") or {}).items()}
        if not timeline.get("t") or not per_gpu:
            continue
        used.append(str(path))
        for index, g in per_gpu.items():
            util.setdefault(index, []).extend(float(u) for u in g["util_pct"])
            peak[index] = max(peak.get(index, 0), max(g["mem_used_bytes"], default=0))
        sums = [sum(col) for col in zip(*(g["mem_used_bytes"] for g in per_gpu.values()),
                                        strict=False)]
        group_peak = max(group_peak, max(sums, default=0))
        means = {i: sum(g["util_pct"]) / len(g["util_pct"]) for i, g in per_gpu.items()
                 if g["util_pct"]}
        if len(means) > 1 and max(means.values()) - min(means.values()) > IMBALANCE_POINTS:
            hi = max(means, key=lambda i: means[i])
            lo = min(means, key=lambda i: means[i])
            imbalance.append(f"group {sorted(per_gpu)}: GPU {hi} at {means[hi]:.0f}% mean "
                             f"utilisation, GPU {lo} at {means[lo]:.0f}%")
    if not util:
        return None, (reasons[0] if reasons else "the NVML sampler recorded no samples")
    per_device = {str(i): {"mean_util_pct": round(sum(u) / len(u), 1) if u else 0.0,
                           "peak_mem_bytes": peak[i]} for i, u in sorted(util.items())}
    device_means = [d["mean_util_pct"] for d in per_device.values()]
    return {"per_device": per_device, "group_peak_mem_bytes": group_peak,
            "mean_util_pct": round(sum(device_means) / len(device_means), 1), "timelines": used,
            "imbalance": "; ".join(imbalance) or None}, None


def gpu_properties(record: dict[str, Any] | None) -> list[tuple[str, float]]:
    """The items' ``gpu_mean_util_pct`` and ``gpu_peak_mem_gib``, from the record's gpu section.

    The same figures the budgets judge (budgets.measure: ``gpu_util``, ``gpu_memory``)
    and the reports show, so a cached job reports what was recorded with its results.
    The names land in JUnit XML, which CI reads: keep them. Empty without samples.
    """
    gpu = (record or {}).get("gpu")
    if not isinstance(gpu, dict) or not gpu.get("per_device"):
        return []
    peak = max(int(d["peak_mem_bytes"]) for d in gpu["per_device"].values())
    return [("gpu_mean_util_pct", float(gpu["mean_util_pct"])),
            ("gpu_peak_mem_gib", round(peak / 2**30, 2))]


def recorded(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The record kept in the store for a cached job (older stores: the wall time alone)."""
    record = meta.get("job")
    if isinstance(record, dict):
        return dict(record, cached=True)
    wall = _num(meta.get("wall_s"))
    if wall is None:
        return None
    return {"wall_s": wall, "tasks": {}, "gpu": None, "cached": True, "partial": False,
            "gpu_unavailable": "no GPU figures were recorded for these results"}
