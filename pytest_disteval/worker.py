"""The worker: runs in a child process, owns the model, calls lm-eval's Python API.

``python -m pytest_disteval.worker SPEC.json``. The model loads once; each run
(a set of task entries that share num_fewshot, limit and seeds) is one
``lm_eval.simple_evaluate`` call on that model, so scores are exactly what
lm-eval computes. Each task entry's results are stored as soon as its run ends.

The spec's ``mode`` picks what a run does (see sharding.py):

- ``direct`` (default): the model answers every request; entries are stored.
- ``shard``: with ``"shard": {"index": i, "count": n}`` and ``"responses": PATH``,
  the model answers only shard i of n of the requests and stores the responses in
  the sqlite response store at PATH (optional ``chunk_size``: requests per store
  commit). Its metrics are discarded; no entry is stored. Writes
  ``shard-<i>.json`` (requests run, tokens, seconds) to the run dir.
- ``score``: no model is loaded; every request is answered from PATH and the
  entries are stored exactly as ``direct`` stores them.

Exit codes: 0 done; 3 bad request (unknown task, missing backend), written to
the spec's ``error_path`` as a message for the items; anything else a crash.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .store import slice_task, write_json_atomic

EXIT_BAD_REQUEST = 3
MODES = ("direct", "shard", "score")


class BadRequest(Exception):
    """A problem the user fixes in the suite, not a crash."""


def _check_tasks(task_manager: Any, tasks: list[str]) -> None:
    known = set(task_manager.all_tasks)
    for task in tasks:
        if task not in known:
            hint = difflib.get_close_matches(task, sorted(known), n=3)
            did = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise BadRequest(f"lm-eval knows no task or group named {task!r}{did} "
                             "(local tasks are found under the suite's 'include' directories)")


def _load_model(spec: dict[str, Any]) -> Any:
    import lm_eval.api.registry

    try:
        cls = lm_eval.api.registry.get_model(spec["lm_eval_model"])
    except (ImportError, ModuleNotFoundError, ValueError, KeyError) as exc:
        raise BadRequest(f"backend {spec['backend']!r} cannot load: {exc}; "
                         f"install it with: {spec.get('install_hint', '')}") from exc
    extra = {"batch_size": spec.get("batch_size"), "max_batch_size": None,
             "device": spec.get("device")}
    return cls.create_from_arg_obj(dict(spec["model_args"]), extra)


def _mode(spec: dict[str, Any]) -> str:
    mode = spec.get("mode", "direct")
    if mode not in MODES:
        raise BadRequest(f"worker mode {mode!r} is not one of {', '.join(MODES)}")
    if mode != "direct" and not spec.get("responses"):
        raise BadRequest(f"worker mode {mode!r} needs 'responses', the response store's path")
    if mode == "shard":
        shard = spec.get("shard") or {}
        index, count = shard.get("index"), shard.get("count")
        if not (type(index) is int and type(count) is int and 0 <= index < count):
            raise BadRequest(f"worker mode 'shard' needs 'shard': {{'index': i, 'count': n}} "
                             f"with 0 <= i < n, got {shard!r}")
    return mode


def _injected_fault(index: int, run_dir: Path) -> None:
    """``DISTEVAL_FAULT=shard<i>:once|always`` makes shard i crash: how retries are tested.

    ``shard<i>:slow`` makes it slow instead (see _slowed): how a kill mid-shard is tested.
    """
    fault = os.environ.get("DISTEVAL_FAULT", "")
    name, _, how = fault.partition(":")
    if name != f"shard{index}" or how == "slow":
        return
    marker = run_dir / f"fault-shard{index}"
    if how == "always" or not marker.exists():
        marker.touch()
        raise RuntimeError(f"fault injected by DISTEVAL_FAULT={fault}")


def _slowed(lm: Any, index: int) -> Any:
    """With ``DISTEVAL_FAULT=shard<i>:slow``, each call of shard i's model takes 0.25 s more."""
    if os.environ.get("DISTEVAL_FAULT") != f"shard{index}:slow":
        return lm
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        real = getattr(lm, kind)

        def slow(requests: Any, real: Any = real) -> Any:
            time.sleep(0.25)
            return real(requests)

        setattr(lm, kind, slow)
    return lm


def _run_dir(spec: dict[str, Any]) -> Path:
    return Path(spec.get("run_dir") or Path(spec["meta_path"]).parent)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    mode = _mode(spec)
    os.chdir(spec["workdir"])  # lm-eval resolves relative data_files against the cwd
    started = time.perf_counter()
    import lm_eval
    from lm_eval.tasks import TaskManager

    imported = time.perf_counter()
    # indexing lm-eval's ~14k built-in task YAMLs takes seconds: skip it when every
    # task of the job is local
    task_manager = TaskManager(include_path=spec["include_paths"] or None,
                               include_defaults=not spec.get("all_local", False),
                               metadata=dict(spec["model_args"]))
    _check_tasks(task_manager, [e["task"] for r in spec["runs"] for e in r["entries"]])
    indexed = time.perf_counter()
    print(f"[disteval] imports {imported - started:.1f}s, task index {indexed - imported:.1f}s",
          flush=True)
    store = None
    shard_report: dict[str, Any] | None = None
    if mode == "direct":
        lm = _load_model(spec)
    else:
        from .sharding import DEFAULT_CHUNK_SIZE, ReplayLM, ResponseStore, ShardLM

        store = ResponseStore(Path(spec["responses"]))
        if mode == "shard":
            index, count = spec["shard"]["index"], spec["shard"]["count"]
            _injected_fault(index, _run_dir(spec))
            lm = ShardLM(_slowed(_load_model(spec), index), store, spec["model_key"], index,
                         count,
                         chunk_size=int(spec.get("chunk_size") or DEFAULT_CHUNK_SIZE),
                         log=lambda message: print(message, flush=True))
            shard_report = {"shard": {"index": index, "count": count},
                            "model_key": spec["model_key"], "responses": spec["responses"],
                            "complete": False, "runs": [], "requests_executed": 0,
                            "requests_in_shard": 0, "already_stored": 0, "tokens": 0.0,
                            "seconds": 0.0,
                            # the GPUs as this worker sees them (Ray or a lease set them)
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        else:
            # the model is not needed: every answer comes from the store. Multimodal
            # tasks pass lm-eval's check: the shards' real LM already passed it
            lm = ReplayLM(store, spec["model_key"], multimodal=True)
    loaded = time.perf_counter()
    if mode != "score":
        print(f"[disteval] model loaded in {loaded - indexed:.1f}s", flush=True)
    timing: dict[str, Any] = {"import_s": imported - started, "task_index_s": indexed - imported,
                              "load_s": loaded - indexed, "runs": []}
    try:
        for run_spec in spec["runs"]:
            settings = run_spec["settings"]
            tasks = [e["task"] for e in run_spec["entries"]]
            t0 = time.perf_counter()
            how = "" if mode == "direct" else f" ({mode} mode)"
            print(f"[disteval] evaluating {', '.join(tasks)} with {settings}{how}", flush=True)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=settings["num_fewshot"],
                limit=settings["limit"],
                fewshot_random_seed=settings["fewshot_seed"],
                gen_kwargs=spec.get("gen_kwargs"),
                task_manager=task_manager,
                log_samples=False,
                # a shard's metrics are discarded: skip their bootstrap stderr
                **({"bootstrap_iters": 0} if mode == "shard" else {}),
            )
            seconds = time.perf_counter() - t0
            timing["runs"].append({"tasks": tasks, "eval_s": seconds})
            if shard_report is not None:
                _record_shard_run(shard_report, lm, tasks, settings, seconds, started)
                write_json_atomic(_run_dir(spec) / f"shard-{spec['shard']['index']}.json",
                                  shard_report)
                print(f"[disteval] shard {spec['shard']['index']} ran {', '.join(tasks)} "
                      f"({seconds:.1f}s)", flush=True)
                continue
            assert results is not None  # rank 0 of a single process always gets results
            env = {k: results.get(k) for k in ("lm_eval_version", "transformers_version",
                                                "git_hash", "date")}
            for entry in run_spec["entries"]:
                write_json_atomic(Path(entry["path"]), {
                    "entry_key": entry["entry_key"],
                    "model_key": spec["model_key"],
                    "task": entry["task"],
                    "settings": settings,
                    "lm_eval": slice_task(results, entry["task"]),
                    "timing": {"eval_s": seconds, "load_s": timing["load_s"],
                               "tasks_in_run": len(tasks)},
                    "env": env,
                    "computed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                })
            print(f"[disteval] stored {', '.join(tasks)} ({seconds:.1f}s)", flush=True)
    finally:
        if store is not None:
            store.close()
    timing["total_s"] = time.perf_counter() - started
    if shard_report is not None:
        shard_report["complete"] = True
        shard_report["total_s"] = timing["total_s"]
        shard_report["load_s"] = timing["load_s"]
        write_json_atomic(_run_dir(spec) / f"shard-{spec['shard']['index']}.json", shard_report)
        timing["shard"] = {k: shard_report[k] for k in ("shard", "requests_executed",
                                                         "tokens", "seconds")}
    return timing


def _record_shard_run(report: dict[str, Any], lm: Any, tasks: list[str],
                      settings: dict[str, Any], seconds: float, started: float) -> None:
    """Add a run's per-kind counts to ``report`` and update its totals."""
    from dataclasses import asdict

    from .sharding import KindStats

    stats: dict[str, KindStats] = lm.take_stats()
    report["runs"].append({"tasks": tasks, "settings": settings, "eval_s": seconds,
                           "kinds": {kind: asdict(s) for kind, s in stats.items()}})
    total = KindStats()
    for run in report["runs"]:
        for kind_stats in run["kinds"].values():
            total.add(KindStats(**kind_stats))
    report.update({"requests_executed": total.executed, "requests_in_shard": total.in_shard,
                   "already_stored": total.already_stored, "tokens": total.tokens,
                   "seconds": total.seconds, "elapsed_s": time.perf_counter() - started})


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pytest_disteval.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        timing = run(spec)
    except BadRequest as exc:
        write_json_atomic(Path(spec["error_path"]), {"message": str(exc)})
        print(f"[disteval] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_REQUEST
    except Exception as exc:
        # the traceback goes to the log; the items show its last line first
        traceback.print_exc()
        write_json_atomic(Path(spec["error_path"]),
                          {"message": f"{type(exc).__name__}: {exc}"})
        return 1
    write_json_atomic(Path(spec["meta_path"]), {"timing": timing})
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # everything is written and flushed; skipping interpreter teardown after torch
    # saves 1.5-2 s per worker (measured by benchmarks/smoke_vs_lm_eval.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
