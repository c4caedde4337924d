"""What a job needs before its worker starts: its model on this machine, its tasks, their data.

The workers run offline on purpose, and a worker finds a missing model or an unknown
task only after seconds of imports, then fails every item with a traceback. Found
here, the job's items fail with one message, told once (``JobFailure.precheck``:
the first item carries it, the others point at it), and no worker starts. The
lookups are the doctor's (preflight/disk.py): a run and ``--disteval-doctor`` agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pytest_disteval.jobs.job import EvalJob, missing_data_files
from pytest_disteval.jobs.launch import OFFLINE_ENV, JobFailure
from pytest_disteval.plan.weights import find_weights, weights_missing
from pytest_disteval.suite.builtin_tasks import unknown_task
from pytest_disteval.suite.model import MODEL_KEY, TaskEntry


def precheck(job: EvalJob, todo: list[TaskEntry], *, weights: bool,
             environ: Mapping[str, str] | None = None) -> JobFailure | None:
    """Every problem of ``job`` that would fail its worker, as one failure; None: none.

    ``weights``: check that the model is on this machine (not when its backend is missing,
    its items skip; nor on Ray, whose nodes have disks of their own).
    """
    environ = os.environ if environ is None else environ
    model = job.model
    problems: list[tuple[str, str, list[str]]] = []  # (in short, in full, its fixes)
    absent = weights and find_weights(model, job.suite.workdir, environ) is None
    if absent:
        looked, fixes = weights_missing(model, job.suite.workdir, environ)
        problems.append(("its weights are not on this machine",
                         f"model_args.{MODEL_KEY[model.backend]} {model.weights!r}: "
                         f"{'; '.join(looked)}", fixes))
    seen: set[str] = set()
    for entry in todo:
        if entry.task in seen:
            continue
        seen.add(entry.task)
        if entry.local is None:
            unknown = unknown_task(entry.task, job.suite.include_paths, entry.loc)
            if unknown is not None:
                what, fix = unknown
                problems.append((f"task {entry.task!r} is unknown", what, [fix]))
            continue
        missing = missing_data_files(entry, job.suite.workdir)
        if missing:
            problems.append((f"task {entry.task!r} lacks its data files",
                             f"task {entry.task!r} ({entry.local.path}) reads "
                             f"{', '.join(missing)}, not found relative to the suite's "
                             f"workdir {job.suite.workdir}",
                             ["fix data_files, or set 'workdir' in the suite to change the "
                              "base"]))
    if not problems:
        return None
    lines = [f"model {job.name!r} ({model.loc}) was not started: "
             + ", ".join(short for short, _, _ in problems)]
    for _, what, fixes in problems:
        lines.append(f"- {what}")
        lines.extend(f"  {'fix: ' if i == 0 else ' or: '}{fix}" for i, fix in enumerate(fixes))
    if absent:
        offline = ", ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items() if k.endswith("OFFLINE"))
        lines.append(f"the workers run offline on purpose (the plugin sets {offline}): a gate "
                     "must not depend on what the hub serves today, so nothing is downloaded "
                     "during a run")
    lines.append(f"to check every model, task and dataset at once: "
                 f"pytest --disteval-doctor {job.suite.path}")
    return JobFailure("\n".join(lines), precheck=True)
