"""The worker: runs in a child process, owns the model, calls lm-eval's Python API.

``python -m pytest_disteval.worker SPEC.json``. The model loads once; each run
(a set of task entries that share num_fewshot, limit and seeds) is one
``lm_eval.simple_evaluate`` call on that model, so scores are exactly what
lm-eval computes. Each task entry's results are stored as soon as its run ends.

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


def run(spec: dict[str, Any]) -> dict[str, Any]:
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
    lm = _load_model(spec)
    loaded = time.perf_counter()
    print(f"[disteval] model loaded in {loaded - indexed:.1f}s", flush=True)
    timing: dict[str, Any] = {"import_s": imported - started, "task_index_s": indexed - imported,
                              "load_s": loaded - indexed, "runs": []}
    for run_spec in spec["runs"]:
        settings = run_spec["settings"]
        tasks = [e["task"] for e in run_spec["entries"]]
        t0 = time.perf_counter()
        print(f"[disteval] evaluating {', '.join(tasks)} with {settings}", flush=True)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=settings["num_fewshot"],
            limit=settings["limit"],
            fewshot_random_seed=settings["fewshot_seed"],
            gen_kwargs=spec.get("gen_kwargs"),
            task_manager=task_manager,
            log_samples=False,
        )
        seconds = time.perf_counter() - t0
        timing["runs"].append({"tasks": tasks, "eval_s": seconds})
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
    timing["total_s"] = time.perf_counter() - started
    return timing


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
    sys.exit(main(sys.argv[1:]))
