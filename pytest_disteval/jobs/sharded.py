"""A dp-sharded run: one shard worker per replica, a retry on another group, the scorer.

Every replica builds the full request list and executes its shard into the
response store; the scoring worker starts beside the shards (its imports and
task index overlap theirs) and waits for the go file this run writes once every
shard succeeded, then stores the entries exactly as a direct worker would
(worker/sharding.py). A shard that fails runs once more, on another group; what
it stored is not redone.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from pytest_disteval.executors.base import WorkerRun
from pytest_disteval.executors.local import kill_all
from pytest_disteval.gpu.inventory import GPU
from pytest_disteval.gpu.lease import Lease, LeaseManager
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.jobs.launch import JobFailure, Launcher, failure
from pytest_disteval.plan.planner import JobPlan
from pytest_disteval.store.results import write_json_atomic
from pytest_disteval.worker.spec import ShardSpec, WorkerSpec

Group = tuple[str, ...]  # a group's GPU uuids: what a lease and a replica are keyed by


class ShardedRun:
    """Runs jobs of dp > 1: leases their groups, starts shards and the scorer, retries."""

    def __init__(self, launcher: Launcher, leases: LeaseManager) -> None:
        self.launcher = launcher
        self.leases = leases
        self._alloc = threading.Lock()  # one job at a time picks its groups: no deadlock

    def run(self, job: EvalJob, plan: JobPlan, spec: WorkerSpec, run_dir: Path,
            responses: Path, timeout: float | None, *,
            score: bool = True) -> tuple[WorkerRun, JobFailure | None]:
        """Evaluate ``spec``'s entries on ``plan``'s replicas; the scorer's run, or a shard's.

        ``score=False`` (--disteval-predict-only): the shards only; the first one's run.
        """
        started = time.perf_counter()
        executor = self.launcher.executor
        leases = self._lease(job, plan, timeout)
        if leases:
            wanted = len(leases)
            pack = len(plan.groups) // wanted
            replica_groups = [list(lease.gpus) for lease in leases.values() for _ in range(pack)]
            distinct = [list(lease.gpus) for lease in leases.values()]
        else:
            replica_groups = plan.groups
            distinct = plan.groups if executor.remote else plan.groups[:1]
        runs: dict[int, WorkerRun] = {}

        def shard(index: int, group: list[GPU], attempt: int) -> None:
            lease = leases.get(_uuids(group))
            shard_spec = replace(spec, mode="shard", responses=responses,
                                 shard=ShardSpec(index, len(plan.groups)),
                                 error_path=run_dir / f"error-{index}.json",
                                 meta_path=run_dir / f"meta-shard{index}.json",
                                 run_dir=run_dir)
            name = f"{job.run_name}-shard{index}" + (f"-retry{attempt}" if attempt else "")
            # only the group's variables: the worker's own environment must win
            runs[index] = self.launcher.launch(job, plan, group, lease.env({}) if lease else {},
                                               shard_spec, run_dir / f"spec-shard{index}.json",
                                               name, timeout)

        # the scoring worker starts now: its start-up (imports, task index) overlaps the
        # shards'; it waits for `go` before it reads the store
        go = run_dir / "score-go.json"
        score_runs: list[WorkerRun] = []
        score_spec = replace(spec, mode="score", responses=responses, wait_for=go,
                             session_pid=os.getpid())
        scorer = threading.Thread(target=lambda: score_runs.append(self.launcher.launch(
            job, plan, [], {}, score_spec, run_dir / "spec-score.json",
            f"{job.run_name}-score", timeout)), daemon=True)
        if score:
            scorer.start()
        try:
            threads = [threading.Thread(target=shard, args=(i, g, 0), daemon=True)
                       for i, g in enumerate(replica_groups)]
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    thread.join()
            except BaseException:
                executor.kill_all()  # Ctrl-C lands here; the shard workers die with it
                raise
            for index in sorted(runs):
                if runs[index].returncode != 0:
                    # once, on another group: what the shard stored is not redone
                    shard(index, _other_group(distinct, replica_groups[index]), 1)
        finally:
            for lease in leases.values():
                lease.release()
        failed = [i for i in sorted(runs) if runs[i].returncode != 0]
        write_json_atomic(go, {"go": not failed, "why": f"shard {failed[0]} failed"
                               if failed else ""})
        try:
            if score:
                scorer.join()
        except BaseException:
            kill_all()
            raise
        if failed:
            run = runs[failed[0]]
            why = failure(job, run, run_dir / f"error-{failed[0]}.json", timeout)
            if why is not None:
                why.message = (f"shard {failed[0]} of {len(plan.groups)} failed twice "
                               f"(the retry ran on another group): {why.message}")
            return run, why
        if not score:
            first = runs[0]
            first.wall_s = time.perf_counter() - started
            return first, None
        (scored,) = score_runs
        scored.wall_s = time.perf_counter() - started
        return scored, failure(job, scored, run_dir / "error.json", timeout)

    def _lease(self, job: EvalJob, plan: JobPlan, timeout: float | None) -> dict[Group, Lease]:
        """Each distinct group of the job, leased once for the whole job (packed replicas
        share it); none on the CPU, and none where the executor hands out GPUs itself."""
        if not plan.groups[0] or self.launcher.executor.remote:
            return {}
        wanted = len({_uuids(group) for group in plan.groups})
        owner = f"pytest-disteval {job.key}"
        leases: dict[Group, Lease] = {}
        # which groups is decided now, among the free ones, so side-by-side jobs never collide
        with self._alloc:
            try:
                for _ in range(wanted):
                    taken = {uuid for group in leases for uuid in group}
                    free = [c for c in plan.candidates if not taken & {g.uuid for g in c}]
                    lease = self.leases.acquire_any(free, timeout=timeout, owner=owner)
                    leases[_uuids(list(lease.gpus))] = lease
            except BaseException:
                for lease in leases.values():
                    lease.release()
                raise
        return leases


def _uuids(group: list[GPU]) -> Group:
    return tuple(g.uuid for g in group)


def _other_group(distinct: list[list[GPU]], group: list[GPU]) -> list[GPU]:
    """The next distinct group after ``group`` (itself when there is no other)."""
    keys = [_uuids(d) for d in distinct]
    here = keys.index(_uuids(group)) if group else 0
    return distinct[(here + 1) % len(distinct)]
