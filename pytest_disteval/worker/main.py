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
  entries are stored exactly as ``direct`` stores them. With ``wait_for``: a
  path the scheduler writes when the shards are done; the worker starts beside
  them (imports, task index) and waits for it before it scores.

Out of memory: where the backend's batch size is a number (hf), a run that runs
out of GPU memory is retried in the same process at half the batch size, down to
1, each retry logged and recorded in ``meta.json``; past that, or on a backend
that sizes its own batches (vllm), the worker stops with a message that says
what to change (worker/faults.py). It never waits on a wedged GPU.

Exit codes (worker/spec.py): 0 done; 3 bad request (a bad spec, unknown task,
missing backend, out of memory at the smallest batch), written to the spec's
``error_path`` as a message for the items; anything else a crash.
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

from pytest_disteval.store.results import slice_task, write_json_atomic
from pytest_disteval.worker.counting import RequestCounter, host_peak_rss_bytes, leaf_map
from pytest_disteval.worker.faults import (
    halve_batch,
    inject_oom,
    injected_fault,
    is_oom,
    slowed,
)
from pytest_disteval.worker.spec import (
    EXIT_BAD_REQUEST,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_USAGE,
    BadRequest,
    EntrySpec,
    SpecError,
    WorkerSpec,
)


def _check_tasks(task_manager: Any, tasks: list[str]) -> None:
    known = set(task_manager.all_tasks)
    for task in tasks:
        if task not in known:
            hint = difflib.get_close_matches(task, sorted(known), n=3)
            did = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
            raise BadRequest(f"lm-eval knows no task or group named {task!r}{did} "
                             "(local tasks are found under the suite's 'include' directories)")


def _check_template(lm: Any, template: bool | str) -> None:
    """A template name the tokenizer lacks stops the run, as lm-eval's CLI stops: its
    evaluation tracker asks ``lm.chat_template(name)``, which raises for a missing one.
    A tokenizer with no template at all (``None``) is refused here too, before
    transformers fails on the first prompt with a message that names no key."""
    if not template:
        return
    try:
        found = lm.chat_template(template)
    except ValueError as exc:
        raise BadRequest(f"apply_chat_template {template!r}: {exc}") from exc
    if found is None:
        raise BadRequest(f"apply_chat_template {template!r}: the model's tokenizer has no chat "
                         "template; leave apply_chat_template out for plain prompts, or give "
                         "the tokenizer its template (tokenizer_config.json's chat_template)")


def allow_code_eval(spec: WorkerSpec) -> None:
    """HF_ALLOW_CODE_EVAL=1 in a worker whose suite consented to run model code: HF's
    code_eval, which humaneval and mbpp score with, refuses without it (lm-eval's CLI
    leaves it to the user). A value the user set stays; without consent, none is set."""
    if any(run.settings.get("confirm_run_unsafe_code") for run in spec.runs):
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")


def unsafe_hint(exc: BaseException) -> str | None:
    """lm-eval's refusal of an unsafe task, said in the suite's terms; None for anything else.
    Collection refuses the unsafe tasks it can see; this is for those it cannot (a local tag,
    a task defined inline in a group)."""
    text = str(exc)
    if not (isinstance(exc, ValueError) and "marked as unsafe" in text):
        return None
    return (f"{text.strip()} In the suite: add 'confirm_run_unsafe_code: true' to the model "
            "or to the task entry; the task runs code the model writes, on this machine (see "
            "docs/suites.md#tasks-that-run-model-code)")


def _load_model(spec: WorkerSpec) -> Any:
    import lm_eval.api.registry

    try:
        cls = lm_eval.api.registry.get_model(spec.lm_eval_model)
    except (ImportError, ModuleNotFoundError, ValueError, KeyError) as exc:
        raise BadRequest(f"backend {spec.backend!r} cannot load: {exc}; "
                         f"install it with: {spec.install_hint}") from exc
    extra = {"batch_size": spec.batch_size, "max_batch_size": spec.max_batch_size,
             "device": spec.device}
    return cls.create_from_arg_obj(dict(spec.model_args), extra)


def _session_gone(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _wait_for_shards(go: Path, session_pid: int | None = None) -> None:
    """A scoring worker started beside the shards (its start-up overlaps theirs) waits here.

    The scheduler writes ``go`` with ``{"go": true}`` once every shard succeeded, or
    ``{"go": false, "why": ...}`` when one failed for good.
    """
    print("[disteval] scoring worker ready; waiting for the shards", flush=True)
    while not go.exists():
        # a session killed outright (SIGKILL, a lost CI runner) never writes the go file:
        # the waiting worker, in a session of its own, would otherwise wait for ever
        if _session_gone(session_pid):
            raise BadRequest(f"not scored: the pytest session (pid {session_pid}) that "
                             "started this worker is gone")
        time.sleep(0.1)
    signal = json.loads(go.read_text(encoding="utf-8"))
    if not signal.get("go"):
        raise BadRequest(f"not scored: {signal.get('why', 'a shard failed')}")


def _count_progress(lm: Any, spec: WorkerSpec) -> Any:
    # requests done and known, for the live progress line of the pytest process.
    # Under torchrun (tp/pp ranks of one replica) every rank sees the same requests:
    # rank 0 counts for all of them
    if os.environ.get("RANK", "0") == "0":
        from pytest_disteval.worker.progress import install

        install(lm, spec.directory / f"progress-{os.getpid()}.json")
    return lm


def run(spec: WorkerSpec) -> dict[str, Any]:
    mode = spec.mode
    os.chdir(spec.workdir)  # lm-eval resolves relative data_files against the cwd
    allow_code_eval(spec)
    started = time.perf_counter()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from pytest_disteval.worker import speedups

    # a shard's results are discarded: it need not collect the environment at all
    applied = speedups.apply(collect_env=mode != "shard")
    imported = time.perf_counter()
    # indexing lm-eval's ~14k built-in task YAMLs takes seconds: skip it when every
    # task of the job is local
    task_manager = TaskManager(include_path=[str(p) for p in spec.include_paths] or None,
                               include_defaults=not spec.all_local,
                               metadata=dict(spec.model_args))
    # a run with metadata of its own gets a TaskManager of its own: lm-eval's CLI merges
    # --metadata over model_args into the TaskManager it builds
    managers: dict[str, Any] = {"{}": task_manager}

    def manager_for(metadata: dict[str, Any]) -> Any:
        key = json.dumps(metadata, sort_keys=True, default=str)
        if key not in managers:
            managers[key] = TaskManager(
                include_path=[str(p) for p in spec.include_paths] or None,
                include_defaults=not spec.all_local, metadata=dict(spec.model_args) | metadata)
        return managers[key]
    _check_tasks(task_manager, spec.tasks)
    # doc ids drawn and checked before the model loads: a bad id costs no load
    selections = [_doc_selection(run_spec.settings, run_spec.entries, task_manager)
                  for run_spec in spec.runs]
    indexed = time.perf_counter()
    print(f"[disteval] imports {imported - started:.1f}s, task index {indexed - imported:.1f}s"
          f" (lm-eval speed-ups: {', '.join(applied) or 'none'})", flush=True)
    store = None
    shard_report: dict[str, Any] | None = None
    counter = RequestCounter()  # requests, tokens and seconds of the model, per task
    real_lm: Any = None
    if mode == "direct":
        lm = real_lm = counter.install(_load_model(spec))
        _count_progress(lm, spec)
    else:
        from pytest_disteval.store.responses import ResponseStore
        from pytest_disteval.worker.sharding import DEFAULT_CHUNK_SIZE, ReplayLM, ShardLM

        assert spec.responses is not None  # the spec checked it: shard and score need one
        store = ResponseStore(spec.responses)
        if mode == "shard":
            assert spec.shard is not None  # WorkerSpec.from_dict checked it
            index, count = spec.shard.index, spec.shard.count
            injected_fault(index, spec.directory)
            real_lm = counter.install(slowed(_load_model(spec), index))
            lm = ShardLM(_count_progress(real_lm, spec), store, spec.model_key, index, count,
                         chunk_size=spec.chunk_size or DEFAULT_CHUNK_SIZE,
                         log=lambda message: print(message, flush=True))
            shard_report = {"shard": {"index": index, "count": count},
                            "model_key": spec.model_key, "responses": str(spec.responses),
                            "complete": False, "runs": [], "requests_executed": 0,
                            "requests_in_shard": 0, "already_stored": 0, "tokens": 0.0,
                            "seconds": 0.0,
                            # the GPUs as this worker sees them (Ray or a lease set them)
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        else:
            # the model is not needed: every answer comes from the store. Multimodal
            # tasks pass lm-eval's check: the shards' real LM already passed it
            lm = ReplayLM(store, spec.model_key, multimodal=True)
            if spec.wait_for is not None:
                speedups.start_env_probe()
                _wait_for_shards(spec.wait_for, spec.session_pid)
    loaded = time.perf_counter()
    if mode == "direct":
        speedups.start_env_probe()
    if mode != "score":
        inject_oom(lm)
        if os.environ.get("DISTEVAL_FAULT") == "hang":
            # a wedged worker with its model loaded: how the job timeout is tested on a GPU
            print("[disteval] hanging (DISTEVAL_FAULT=hang)", flush=True)
            time.sleep(10**6)
        torch = sys.modules.get("torch")
        # packed replicas share the cores: each says how many torch uses
        threads = f" (torch threads {torch.get_num_threads()})" if torch is not None else ""
        print(f"[disteval] model loaded in {loaded - indexed:.1f}s{threads}", flush=True)
    timing: dict[str, Any] = {"import_s": imported - started, "task_index_s": indexed - imported,
                              "load_s": loaded - indexed,
                              "runs": [], "tasks": {}, "oom_retries": []}
    try:
        for run_spec, (limit, samples) in zip(spec.runs, selections, strict=True):
            settings = run_spec.settings
            tasks = run_spec.tasks
            t0 = time.perf_counter()
            how = "" if mode == "direct" else f" ({mode} mode)"
            print(f"[disteval] evaluating {', '.join(tasks)} with {settings}{how}", flush=True)
            kwargs = run_spec.evaluate_kwargs(spec.gen_kwargs)
            # the documents: a limit, or doc ids (the suite's, or a seeded draw)
            kwargs["limit"], kwargs["samples"] = limit, samples
            kwargs["confirm_run_unsafe_code"] = bool(settings.get("confirm_run_unsafe_code"))
            if mode == "shard":
                kwargs["bootstrap_iters"] = 0  # a shard's metrics are discarded: no stderr
            if mode != "score":
                _check_template(lm, kwargs["apply_chat_template"])
            while True:
                try:
                    results = lm_eval.simple_evaluate(
                        model=lm,
                        tasks=tasks,
                        task_manager=manager_for(run_spec.metadata),
                        # per-document results for paired regression tests (samples.py);
                        # a shard's are discarded like its metrics
                        log_samples=mode != "shard",
                        **kwargs,
                    )
                    break
                except Exception as exc:
                    if mode == "score" or not is_oom(exc):
                        raise
                    # the same model, a smaller batch; a shard keeps what it stored
                    halve_batch(lm, exc, timing["oom_retries"])
            seconds = time.perf_counter() - t0
            timing["runs"].append({"tasks": tasks, "eval_s": seconds})
            if real_lm is not None and results is not None:
                counted = time.perf_counter()
                timing["tasks"].update(_task_counts(counter, real_lm, run_spec.entries,
                                                    results, seconds))
                # counting tokens is outside eval_s; its own cost is kept to be seen
                timing["runs"][-1]["count_s"] = time.perf_counter() - counted
            if shard_report is not None:
                lm.flush_renders()  # the chat renderings of this run, for the scorer
                shard_run = _record_shard_run(shard_report, lm, tasks, settings, seconds,
                                              started, t0)
                write_json_atomic(spec.directory / f"shard-{index}.json", shard_report)
                print(f"[disteval] shard {index} ran {', '.join(tasks)} "
                      f"({_shard_phases(shard_run)})", flush=True)
                continue
            assert results is not None  # rank 0 of a single process always gets results
            env = {k: results.get(k) for k in ("lm_eval_version", "transformers_version",
                                                "git_hash", "date")}
            for entry in run_spec.entries:
                # the samples first: an entry on disk then always has its samples beside it
                _store_samples(results, entry, export=spec.export_samples)
                write_json_atomic(entry.path, {
                    "entry_key": entry.entry_key,
                    "model_key": spec.model_key,
                    "task": entry.task,
                    "settings": settings,
                    "lm_eval": slice_task(results, entry.task),
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
    timing["host_peak_rss_bytes"] = host_peak_rss_bytes()
    if shard_report is not None:
        shard_report["complete"] = True
        shard_report["total_s"] = timing["total_s"]
        shard_report["load_s"] = timing["load_s"]
        write_json_atomic(spec.directory / f"shard-{index}.json", shard_report)
        timing["shard"] = {k: shard_report[k] for k in ("shard", "requests_executed",
                                                         "tokens", "seconds")}
    return timing


def _doc_selection(settings: dict[str, Any], entries: tuple[EntrySpec, ...],
                   task_manager: Any) -> tuple[int | float | None, dict[str, list[int]] | None]:
    """simple_evaluate's ``limit`` and ``samples`` for a run's settings.

    ``samples`` (the suite's doc ids) go to each leaf task of each entry; ``limit`` with
    ``limit_seed`` becomes ``samples`` too: that many ids drawn with
    ``random.Random(seed)`` from each leaf task's own number of documents, so every
    shard and the scorer, drawing here from the same task, score the same documents.
    """
    ids, seed = settings.get("samples"), settings.get("limit_seed")
    if ids is None and seed is None:
        return settings["limit"], None
    import math
    import random

    out: dict[str, list[int]] = {}
    for entry in entries:
        for leaf, task in task_manager.load([entry.task])["tasks"].items():
            n = len(task.eval_docs)
            if ids is not None:
                bad = [i for i in ids if i >= n]
                if bad:
                    where = f"{entry.samples_at}: " if entry.samples_at else ""
                    raise BadRequest(f"{where}samples: doc ids {bad[:5]} are out of range: "
                                     f"task {leaf!r} has {n} documents (ids 0 to {n - 1})")
                out[leaf] = sorted(ids)
            else:
                limit = settings["limit"]
                # as lm-eval reads a limit: a fraction of the documents, else a count
                k = math.ceil(n * limit) if limit < 1 else min(int(limit), n)
                # sorted: lm-eval maps a logged doc_id back through the ids in this order
                out[leaf] = sorted(random.Random(seed).sample(range(n), k))
    # the ids in the log: lm-eval's --samples reproduces the run by hand
    print(f"[disteval] samples: {json.dumps(out, separators=(',', ':'))}", flush=True)
    return None, out


def _task_counts(counter: RequestCounter, lm: Any, entries: tuple[EntrySpec, ...],
                 results: dict[str, Any], seconds: float) -> dict[str, dict[str, Any]]:
    """Each entry's requests, tokens and seconds in this ``simple_evaluate`` call.

    An entry alone in its call gets the call's seconds; entries sharing a call get
    their model time plus a request share of the rest (building requests, scoring).
    """
    names = [(e.name or e.task, e.task) for e in entries]
    counts = counter.take(lm, leaf_map(names, results.get("group_subtasks") or {}))
    total_requests = sum(c.requests for c in counts.values()) or 1
    rest = max(seconds - sum(c.model_s for c in counts.values()), 0.0)
    out = {}
    for name, _task in names:
        c = counts.get(name)
        if len(names) == 1:
            eval_s = seconds
        else:
            eval_s = (c.model_s + rest * c.requests / total_requests) if c else 0.0
        out[name] = {"eval_s": eval_s, "requests": c.requests if c else 0,
                     "tokens": c.tokens if c else 0}
    return out


def _store_samples(results: dict[str, Any], entry: EntrySpec, *, export: bool = False) -> None:
    from pytest_disteval.store.samples import entry_samples, write_samples

    logged = results.get("samples") or {}
    names = [entry.task, *_subtasks(results, entry.task)]
    per_task = entry_samples(logged, names)
    if per_task:
        write_samples(entry.path, entry.entry_key, per_task)
    if export:
        from pytest_disteval.store import export as sample_export

        sample_export.write_export(sample_export.export_path(entry.path),
                                   sample_export.lines(logged, entry.name or entry.task, names))


def _subtasks(results: dict[str, Any], task: str) -> list[str]:
    children = (results.get("group_subtasks") or {}).get(task) or []
    return [leaf for child in children for leaf in (child, *_subtasks(results, child))]


def _record_shard_run(report: dict[str, Any], lm: Any, tasks: list[str],
                      settings: dict[str, Any], seconds: float, started: float,
                      run_started: float) -> dict[str, Any]:
    """Add a run's per-kind counts to ``report``, update its totals; the run's entry."""
    from dataclasses import asdict

    from pytest_disteval.worker.sharding import KindStats

    stats: dict[str, KindStats] = lm.take_stats()
    first = lm.take_first_request_at()
    # lm-eval's own work before it asked for responses: the dataset, the contexts
    build = None if first is None else first - run_started
    run = {"tasks": tasks, "settings": settings, "eval_s": seconds, "build_s": build,
           "kinds": {kind: asdict(s) for kind, s in stats.items()}}
    report["runs"].append(run)
    total = KindStats()
    for each in report["runs"]:
        for kind_stats in each["kinds"].values():
            total.add(KindStats(**kind_stats))
    report.update({"requests_executed": total.executed, "requests_in_shard": total.in_shard,
                   "already_stored": total.already_stored, "tokens": total.tokens,
                   "seconds": total.seconds, "elapsed_s": time.perf_counter() - started})
    return run


def _shard_phases(run: dict[str, Any]) -> str:
    """Where a shard's seconds went, for its log: a packed GPU's time shows up here."""
    kinds = run["kinds"].values()
    model = sum(k["seconds"] for k in kinds)
    parts = [f"{run['eval_s']:.1f}s"]
    if run["build_s"] is not None:
        parts.append(f"{run['build_s']:.1f}s building requests, "
                     f"{sum(k['plan_s'] for k in kinds):.1f}s planning the shard, "
                     f"{model:.1f}s in the model and the store")
    return ": ".join(parts)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pytest_disteval.worker SPEC.json", file=sys.stderr)
        return EXIT_USAGE
    text = Path(argv[0]).read_text(encoding="utf-8")
    try:
        spec = WorkerSpec.from_json(text)
    except SpecError as exc:
        _refuse(text, exc)
        return EXIT_BAD_REQUEST
    try:
        timing = run(spec)
    except BadRequest as exc:
        write_json_atomic(spec.error_path, {"message": str(exc)})
        print(f"[disteval] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_REQUEST
    except Exception as exc:
        hint = unsafe_hint(exc)
        if hint is not None:  # a user's fix, not a crash
            write_json_atomic(spec.error_path, {"message": hint})
            print(f"[disteval] error: {hint}", file=sys.stderr, flush=True)
            return EXIT_BAD_REQUEST
        # the traceback goes to the log; the items show its last line first
        traceback.print_exc()
        write_json_atomic(spec.error_path, {"message": f"{type(exc).__name__}: {exc}"})
        return EXIT_CRASH
    write_json_atomic(spec.meta_path, {"timing": timing})
    return EXIT_OK


def _refuse(text: str, exc: SpecError) -> None:
    """A spec that does not parse: its message goes where the spec says errors go, if it does."""
    print(f"[disteval] error: {exc}", file=sys.stderr, flush=True)
    try:
        error_path = json.loads(text).get("error_path")
    except (ValueError, AttributeError):
        error_path = None
    if error_path:
        write_json_atomic(Path(error_path), {"message": str(exc)})

