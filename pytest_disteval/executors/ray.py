"""The Ray executor: every group's worker in a Ray actor that asks for the group's GPUs.

``--disteval-executor ray`` (with ``--ray-address``, else a local Ray instance).
The GPUs come from Ray's resources, not this host's NVML: an actor asks for
``num_gpus = group size`` and Ray places it on a node with that many free GPUs,
so a group never spans nodes. Every model run on Ray is request-sharded (dp=1 is
one shard of one): an actor's worker writes responses to a store on its node,
the actor streams them back (executors/ray_actor.py) and this process writes them
into the session's response store, where the scoring worker replays them here,
so scoring and gates are those of the local executor. An actor lost mid-shard
(ray.kill, a dead node) is replaced and its shard rescheduled; what it streamed
is not redone.

``ray`` is imported on first use only: collection and plans without Ray stay light.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_disteval.executors.base import WorkerRun, WorkerTask
from pytest_disteval.executors.local import kill_all
from pytest_disteval.executors.ray_actor import read_rows, write_rows
from pytest_disteval.gpu.inventory import GPU, NoGPUError
from pytest_disteval.store.results import write_json_atomic

INSTALL_HINT = "pip install 'pytest-disteval[ray]'"
NAMESPACE = "disteval"
ACTOR_ATTEMPTS = 3  # an actor lost mid-shard is replaced up to twice, then the shard fails
ACTOR_CPUS = 1  # the worker's own process; tokenization and the CPU side of the backend
# variables of this host that must not reach a worker elsewhere: Ray sets the GPUs
_HOST_ONLY = {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTHONPATH"}
# variables the scheduler sets for every worker: sent even when this host has them too
_WORKER_VARS = {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_EVALUATE_OFFLINE", "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED",
                "OMP_NUM_THREADS"}


class RayConnectError(NoGPUError):
    """The cluster cannot be reached: every job's items say so, with the address."""


def ray_available() -> bool:
    """Whether ``import ray`` would work, without importing it."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None  # None: the import is blocked
    return importlib.util.find_spec("ray") is not None


class RayInventory:
    """The cluster's GPUs, as Ray counts them; a node is a domain (groups stay inside).

    Indices run across the cluster (node by node) so groups are contiguous; the GPU
    ids an actor really gets are Ray's, recorded when it starts. Ray does not report
    GPU memory: it is read from this host's NVML where it has GPUs (the cluster is
    taken to be uniform), else 0, meaning unknown.
    """

    source = "ray"

    def __init__(self, nodes: list[dict[str, Any]], memory: int = 0) -> None:
        self.nodes = nodes
        self._gpus: list[GPU] = []
        self._domain: dict[str, str] = {}
        for node in nodes:
            count = int(node["gpus"])
            for i in range(count):
                gpu = GPU(index=len(self._gpus), uuid=f"ray-{node['node_id'][:12]}-{i}",
                          name=f"{node['accelerator'] or 'GPU'} on {node['ip']}",
                          total_memory=memory, free_memory=memory)
                self._gpus.append(gpu)
                self._domain[gpu.uuid] = node["node_id"]

    def gpus(self) -> list[GPU]:
        return list(self._gpus)

    def domain(self, gpu: GPU) -> str | None:
        return self._domain.get(gpu.uuid)


def _nodes(ray: Any) -> list[dict[str, Any]]:
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        accelerator = next((k.split(":", 1)[1] for k in resources
                            if k.startswith("accelerator_type:")), None)
        nodes.append({"node_id": node["NodeID"], "ip": node.get("NodeManagerAddress", "?"),
                      "gpus": int(resources.get("GPU", 0)), "cpus": int(resources.get("CPU", 0)),
                      "accelerator": accelerator})
    return sorted(nodes, key=lambda n: (-n["gpus"], n["ip"], n["node_id"]))


def _host_gpu_memory() -> int:
    try:
        from pytest_disteval.gpu.inventory import NvmlInventory

        gpus = NvmlInventory().gpus()
    except Exception:  # no driver, no GPU: unknown
        return 0
    return min((g.total_memory for g in gpus), default=0)


def _unreachable(address: str | None) -> RayConnectError | None:
    """A host:port nobody listens on, found in seconds (Ray itself retries for minutes)."""
    if not address or address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")  # settings.py checked the form
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        return RayConnectError(f"cannot connect to the Ray cluster at {address!r} (from "
                               f"--ray-address or RAY_ADDRESS): {exc}; is `ray start --head "
                               f"--port={port}` running on {host}?")
    return None


class RayExecutor:
    name = "ray"
    remote = True

    def __init__(self, address: str | None, audit_path: Path) -> None:
        self.address = address
        self.audit_path = audit_path
        self._ray: Any = None
        self._actor_class: Any = None
        self._inventory: RayInventory | None = None
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._connect_error: RayConnectError | None = None

    # -- the cluster -----------------------------------------------------------

    def connect(self) -> Any:
        """``ray.init`` once: connect to ``address``, or start a local instance."""
        with self._lock:
            if self._ray is not None:
                return self._ray
            if self._connect_error is not None:
                raise self._connect_error  # once is enough: connecting takes long to fail
            self._connect_error = _unreachable(self.address)
            if self._connect_error is not None:
                raise self._connect_error
            import ray

            import pytest_disteval

            # the plugin's own code travels with the job: nodes need lm-eval and the
            # backend installed, not this exact copy of pytest-disteval
            package = str(Path(pytest_disteval.__file__).resolve().parent)
            kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False,
                                      "runtime_env": {"py_modules": [package]}}
            if self.address is None:
                kwargs.update(include_dashboard=False)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError) as exc:
                self._connect_error = RayConnectError(
                    f"cannot connect to the Ray cluster at {self.address!r} (from "
                    f"--ray-address or RAY_ADDRESS): {exc}; is `ray start --head` running "
                    "there, and is this host's Ray version the cluster's?")
                raise self._connect_error from exc
            from pytest_disteval.executors.ray_actor import GroupActor

            self._actor_class = ray.remote(GroupActor)
            self._ray = ray
            return ray

    def inventory(self) -> RayInventory:
        if self._inventory is None:
            self._inventory = RayInventory(_nodes(self.connect()), _host_gpu_memory())
        return self._inventory

    def describe_cluster(self) -> list[str]:
        """Lines for --disteval-plan: where Ray is, its nodes."""
        inv = self.inventory()
        where = (f"address {self.address}" if self.address
                 else "a local Ray instance started by this session (no --ray-address)")
        lines = [f"executor: ray, {where}; {len(inv.nodes)} node(s), "
                 f"{len(inv.gpus())} GPU(s)"]
        for node in inv.nodes:
            kind = f" {node['accelerator']}" if node["accelerator"] else ""
            lines.append(f"  node {node['ip']} ({node['node_id'][:12]}): {node['gpus']}"
                         f"{kind} GPU(s), {node['cpus']} CPU(s)")
        return lines

    @staticmethod
    def describe_groups(groups: list[list[GPU]], inv: RayInventory | None) -> list[str]:
        """One line per replica: the actor's request, and the nodes that can take it."""
        lines = []
        for i, group in enumerate(groups):
            size = len(group)
            fits = [n["ip"] for n in (inv.nodes if inv else []) if n["gpus"] >= size]
            where = (f"a node with {size} free GPU(s) ({', '.join(fits) or 'none fits'})"
                     if size else "any node with a free CPU")
            lines.append(f"  ray actor {i}: num_gpus={size} num_cpus={ACTOR_CPUS}; Ray places "
                         f"it on {where}")
        return lines

    # -- running ---------------------------------------------------------------

    def run(self, task: WorkerTask) -> WorkerRun:
        """Run the task's worker in an actor; replace the actor if it is lost."""
        ray = self.connect()
        from ray.exceptions import GetTimeoutError, RayActorError, RayError

        lost_errors: tuple[type[BaseException], ...] = (RayActorError,)
        for extra in ("WorkerCrashedError", "NodeDiedError", "ActorUnavailableError"):
            if hasattr(ray.exceptions, extra):
                lost_errors += (getattr(ray.exceptions, extra),)
        spec = task.spec
        chunk = os.environ.get("DISTEVAL_CHUNK_SIZE")
        if chunk and chunk.isdigit() and spec.chunk_size is None:
            # requests per store commit, so per streamed batch too: the resume granularity
            spec = dataclasses.replace(spec, chunk_size=int(chunk))
        store = spec.responses
        run_dir = spec.directory
        # what the scheduler set for the worker, not this host's whole environment
        env = {k: v for k, v in task.env.items() if k not in _HOST_ONLY
               and (os.environ.get(k) != v or k in _WORKER_VARS or k.startswith("DISTEVAL_"))}
        started = time.perf_counter()
        task.log_path.parent.mkdir(parents=True, exist_ok=True)
        lost: list[dict[str, Any]] = []
        with task.log_path.open("w", encoding="utf-8") as log:
            for attempt in range(ACTOR_ATTEMPTS):
                if self._closed:
                    break
                name = f"{task.name}-actor{attempt}"
                actor = self._actor_class.options(
                    name=name, num_gpus=task.group_size, num_cpus=ACTOR_CPUS,
                    max_restarts=0).remote()
                with self._lock:
                    self._actors[name] = actor
                streamed = 0
                where: dict[str, Any] = {}
                try:
                    where = ray.get(actor.where.remote(), timeout=task.timeout)
                    self._audit({"event": "actor", "worker": task.name, "actor": name,
                                 "attempt": attempt, "num_gpus": task.group_size, **where})
                    write_json_atomic(run_dir / f"actor-{name}.json", where)
                    log.write(f"[disteval] ray actor {name} on node {where['node_ip']} "
                              f"({where['node_id'][:12]}), GPU ids {where['gpu_ids']}, "
                              f"CUDA_VISIBLE_DEVICES={where['cuda_visible_devices']}\n")
                    log.flush()
                    seed = read_rows(store, spec.model_key)[0] if store else []
                    # an actor holding GPUs samples them beside its worker (NVML runs on
                    # that node only); the timeline comes back with the result
                    stream = actor.run.options(num_returns="streaming").remote(
                        task.command, spec, env, task.timeout, seed,
                        sample_gpus=task.group_size > 0)
                    for ref in stream:
                        message = ray.get(ref)
                        if message.get("rows") and store is not None:
                            streamed += write_rows(store, spec.model_key, message["rows"])
                        if message.get("log"):
                            log.write(message["log"])
                            log.flush()
                        if message.get("done"):
                            return self._finish(task, message, where, lost, run_dir,
                                                time.perf_counter() - started)
                except GetTimeoutError:
                    log.write(f"[disteval] Ray did not place actor {name} (num_gpus="
                              f"{task.group_size}) within the job timeout\n")
                    return self._failed(task, f"Ray did not place a worker with num_gpus="
                                        f"{task.group_size} within the job timeout; the cluster "
                                        f"has {len(self.inventory().gpus())} GPU(s)",
                                        run_dir, started, timed_out=True)
                except lost_errors as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    lost.append({"attempt": attempt, "actor": name, "streamed": streamed,
                                 "node_id": where.get("node_id"), "error": first})
                    self._audit({"event": "actor_lost", "worker": task.name, "actor": name,
                                 "attempt": attempt, "streamed": streamed, "error": first})
                    log.write(f"\n[disteval] ray actor {name} lost ({type(exc).__name__}: "
                              f"{first}); the {streamed} responses it streamed are kept, "
                              "the rest of its shard goes to a new actor\n")
                    log.flush()
                except RayError as exc:
                    # the actor's own code failed (not a loss): say so, do not retry here
                    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                    log.write(f"\n[disteval] ray actor {name} failed: {exc}\n")
                    return self._failed(task, f"the Ray actor failed: {first}", run_dir,
                                        started)
                finally:
                    self._drop(name)
        return self._failed(task, f"the Ray actor running this worker was lost "
                            f"{len(lost)} time(s): {lost[-1]['error'] if lost else 'closed'}",
                            run_dir, started)

    def _finish(self, task: WorkerTask, message: dict[str, Any], where: dict[str, Any],
                lost: list[dict[str, Any]], run_dir: Path, wall_s: float) -> WorkerRun:
        # the worker's files (shard record, error, meta) land where the local one puts them
        for name, text in message["files"].items():
            path = run_dir / name
            if name.startswith("shard-"):
                record = json.loads(text)
                record["ray"] = {**where, "lost_actors": lost}
                write_json_atomic(path, record)
            else:
                write_json_atomic(path, json.loads(text))
        if message.get("gpu") is not None:
            # the name the scheduler's local sampler uses: jobrecord.gpu_section, the
            # budgets and the reports read it unchanged. A replacement actor's timeline
            # covers its own run only: a lost actor's samples never came back
            write_json_atomic(run_dir / f"gpu-{task.name}.json",
                              cluster_timeline(message["gpu"], where,
                                               self.inventory().nodes))
        return WorkerRun(message["argv"], message["returncode"], wall_s,
                         bool(message["timed_out"]), task.log_path)

    def _failed(self, task: WorkerTask, message: str, run_dir: Path, started: float,
                timed_out: bool = False) -> WorkerRun:
        if not timed_out:
            write_json_atomic(task.spec.error_path, {"message": message})
        return WorkerRun(task.command, None if timed_out else 1,
                         time.perf_counter() - started, timed_out, task.log_path)

    def _drop(self, name: str) -> None:
        with self._lock:
            actor = self._actors.pop(name, None)
        if actor is not None and self._ray is not None:
            try:
                self._ray.kill(actor, no_restart=True)  # frees its GPUs for the next actor
            except Exception:  # already dead
                pass

    def _audit(self, record: dict[str, Any]) -> None:
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        with self.audit_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def kill_all(self) -> None:
        """Kill every actor (their workers die with them) and local workers.

        Only on Ctrl-C or at the end: a shard whose actor this kills must not take it
        for a lost actor and start another.
        """
        self._closed = True
        with self._lock:
            names = list(self._actors)
        for name in names:
            self._drop(name)
        kill_all()

    def close(self) -> None:
        self._closed = True
        self.kill_all()
        if self._ray is not None:
            self._ray.shutdown()


def cluster_timeline(timeline: dict[str, Any], where: dict[str, Any],
                     nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """An actor's timeline, its node's NVML indices renumbered cluster-wide.

    gpu_section pools samples by GPU number (packed replicas share a GPU), so GPU 0
    of two nodes must not be one number. A GPU becomes its node's offset in the
    inventory (the GPU counts of the nodes before it) plus its NVML index: on one
    node, the NVML index itself (what nvidia-smi shows); across nodes, the
    inventory's own numbering where each node's Ray counts all its GPUs (`ray
    start`'s default). The node and each number's NVML index are kept beside.
    """
    offset = 0
    for node in nodes:
        if node["node_id"] == where.get("node_id"):
            break
        offset += int(node["gpus"])
    # (a node that joined after the inventory was read lands past every known GPU)
    renumbered = {str(offset + int(i)): g for i, g in (timeline.get("gpus") or {}).items()}
    out = {k: v for k, v in timeline.items()
           if k not in ("gpus", "cuda_visible_devices", "cuda_device_order")}
    if out.get("unavailable"):
        # the sampler's reason, and the node it ran on: a cluster may mix nodes
        out["unavailable"] = f"{out['unavailable']} on Ray node {where.get('node_ip')}"
    out["gpus"] = renumbered
    out["ray"] = {"node_id": where.get("node_id"), "node_ip": where.get("node_ip"),
                  "actor_pid": where.get("pid"),
                  "cuda_visible_devices": timeline.get("cuda_visible_devices"),
                  "cuda_device_order": timeline.get("cuda_device_order"),
                  # only samples prove a mapping: without, the keys are Ray's ids
                  "nvml_index": {k: int(i) for k, i in zip(
                      renumbered, (timeline.get("gpus") or {}), strict=True)}
                  if timeline.get("t") else None}
    return out
