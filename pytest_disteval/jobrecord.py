"""The job record: how a job ran (layout, GPUs, times, GPU use), kept in its results file.

It goes under ``config.disteval.job`` of the results file, so the reports can be
built in the process that writes them (the xdist controller included) from the
results files alone. Budgets add their own measurements to the same record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .planner import JobPlan


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_seconds(run_dir: Path) -> float | None:
    """The model's load time: the slowest shard's with dp > 1, else the direct worker's."""
    # with dp > 1, meta.json is the scoring worker's, which loads no model
    shards = [_read(p) or {} for p in sorted(run_dir.glob("shard-*.json"))]
    loads = [float(s["load_s"]) for s in shards if isinstance(s.get("load_s"), int | float)]
    if loads:
        return max(loads)
    timing = (_read(run_dir / "meta.json") or {}).get("timing") or {}
    return float(timing["load_s"]) if isinstance(timing.get("load_s"), int | float) else None


def gpu_use(timelines: list[Path]) -> dict[str, Any] | None:
    """Per GPU mean utilisation and peak memory, from the samplers' timelines."""
    per_device: dict[str, dict[str, list[float]]] = {}
    unavailable = []
    for path in timelines:
        data = _read(path) or {}
        if data.get("unavailable"):
            unavailable.append(str(data["unavailable"]))
        for index, series in (data.get("gpus") or {}).items():
            into = per_device.setdefault(str(index), {"util": [], "mem": []})
            into["util"].extend(series.get("util_pct") or [])
            into["mem"].extend(series.get("mem_used_bytes") or [])
    if not per_device:
        return None
    devices = {index: {"mean_util_pct": round(sum(s["util"]) / len(s["util"]), 1)
                       if s["util"] else None,
                       "peak_mem_bytes": int(max(s["mem"])) if s["mem"] else None}
               for index, s in sorted(per_device.items(), key=lambda kv: int(kv[0]))}
    utils = [d["mean_util_pct"] for d in devices.values() if d["mean_util_pct"] is not None]
    peaks = [d["peak_mem_bytes"] for d in devices.values() if d["peak_mem_bytes"] is not None]
    return {"per_device": devices,
            "group_peak_mem_bytes": max(peaks) if peaks else None,
            "mean_util_pct": round(sum(utils) / len(utils), 1) if utils else None,
            "timelines": [str(p) for p in timelines],
            "imbalance": "; ".join(unavailable) or None}


def job_record(plan: JobPlan | None, *, device: str | None, wall_s: float | None,
               run_dir: Path | None, cached: bool) -> dict[str, Any]:
    """What is known about how the job ran; fields stay None where nothing was measured."""
    record: dict[str, Any] = {"layout": None, "device": device or "cpu", "gpus": [],
                              "groups": [], "wall_s": None if wall_s is None
                              else round(wall_s, 3), "load_s": None, "gpu": None,
                              "cached": cached}
    if plan is not None:
        distinct: list[list[int]] = []
        for group in plan.groups:
            indices = [g.index for g in group]
            if indices and indices not in distinct:
                distinct.append(indices)
        layout = plan.layout
        record["layout"] = {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
                            "pack": len(plan.groups) // len(distinct) if distinct else 1}
        seen: dict[int, Any] = {g.index: g for group in plan.groups for g in group}
        record["gpus"] = [{"index": g.index, "uuid": g.uuid, "name": g.name,
                           "memory_total_bytes": g.total_memory}
                          for g in sorted(seen.values(), key=lambda g: g.index)]
        record["groups"] = distinct
        if plan.on_gpu and not device:
            record["device"] = "cuda"
    if run_dir is not None and not cached:
        record["load_s"] = load_seconds(run_dir)
        timelines = sorted(run_dir.glob("gpu-*.json"))
        record["gpu"] = gpu_use(timelines) if timelines else None
    if record["load_s"] is not None:
        record["load_s"] = round(record["load_s"], 3)
    return record
