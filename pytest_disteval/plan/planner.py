"""From options, inventory and a job to a JobPlan: layout, groups, model_args.

Precedence of a layout value: command line (--tp/--pp/--dp) > the suite's
model (tp/pp/dp) > automatic (tp from the memory estimate, dp from the GPUs
left). --gpus / --gpu-ids cap what may be used at all. Every check runs
before a worker starts, and its message says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_disteval.backends import BACKENDS
from pytest_disteval.gpu.inventory import (
    GPU,
    FakeInventory,
    Inventory,
    NoGPUError,
    NvmlInventory,
    make_groups,
)
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.plan.layout import Layout, LayoutError, plan_layout
from pytest_disteval.plan.sizing import (
    count_parameters,
    estimate_memory,
    local_model_dir,
    read_attention_heads,
)
from pytest_disteval.units import format_size


@dataclass(frozen=True)
class GpuOptions:
    gpus: int | str | None = None  # a count, "all", 0 for CPU; None: all, or CPU if none
    pack: int = 1  # replicas per group: small models leave a GPU mostly idle
    gpu_ids: tuple[int, ...] | None = None
    tp: int | str | None = None  # an int or "auto"
    pp: int | None = None
    dp: int | None = None
    fake_gpus: str | None = None
    xdist_worker: bool = False  # one job per xdist worker, each on one free group


@dataclass
class JobPlan:
    layout: Layout
    groups: list[list[GPU]]  # one per replica (a group repeats when packed); [] on CPU
    candidates: list[list[GPU]]  # every group that fits: a single replica takes any free one
    on_gpu: bool
    model_args: dict[str, Any]
    params: int | None = None
    memory_needed: int | None = None
    notes: list[str] = field(default_factory=list)
    gpu_args: dict[str, Any] | None = None  # fake inventory: what real GPUs would be given

    def describe(self, job: EvalJob, python: str) -> list[str]:
        backend = BACKENDS[job.model.backend]
        lines = [f"job {job.suite.path}::{job.name}  backend={job.model.backend}  {self.layout}"]
        if self.params is not None:
            need = format_size(self.memory_needed) if self.memory_needed else "?"
            count = (f"{self.params / 1e9:.2f}B" if self.params >= 1e8
                     else f"{self.params / 1e6:.2f}M")
            lines.append(f"  model: {count} parameters, about {need} per "
                         f"replica (params x bytes per param x 1.2)")
        lines.extend(f"  {note}" for note in self.notes)
        for i, group in enumerate(self.groups):
            where = ("GPUs " + ",".join(str(g.index) for g in group) + " ("
                     + ", ".join(sorted({g.name for g in group})) + ")") if group else "CPU"
            env = (f"CUDA_VISIBLE_DEVICES={','.join(str(g.index) for g in group)} "
                   if group else "")
            command = " ".join(backend.launch(python, self.layout))
            lines.append(f"  replica {i}: {where}")
            lines.append(f"    $ {env}{command} <spec>")
        args = ",".join(f"{k}={v}" for k, v in (self.gpu_args or self.model_args).items())
        lines.append(f"  model_args: {args}")
        tasks = ", ".join(e.task for e in job.entries) or "(none selected)"
        lines.append(f"  tasks: {tasks}")
        return lines


def inventory(options: GpuOptions) -> Inventory | None:
    """The GPUs of this host (or the fake ones); None where there are none."""
    if options.fake_gpus is not None:
        return FakeInventory.from_spec(options.fake_gpus)
    if options.gpus == 0:
        return None
    try:
        return NvmlInventory()
    except NoGPUError:
        if options.gpus not in (None, "all") or options.gpu_ids:
            raise
        return None


def granted_gpus(inv: Inventory | None, options: GpuOptions) -> tuple[list[GPU], str]:
    """The GPUs this session may use, and where that came from (for messages)."""
    if inv is None:
        return [], "no GPU (CPU run)"
    gpus = inv.gpus()
    source = f"{len(gpus)} visible ({inv.source})"
    if options.gpu_ids is not None:
        by_index = {g.index: g for g in gpus}
        missing = [i for i in options.gpu_ids if i not in by_index]
        if missing:
            raise LayoutError(f"--gpu-ids {','.join(map(str, options.gpu_ids))}: no GPU "
                              f"{','.join(map(str, missing))}; visible: "
                              f"{','.join(str(g.index) for g in gpus) or 'none'}")
        gpus = [by_index[i] for i in options.gpu_ids]
        source = f"--gpu-ids {','.join(map(str, options.gpu_ids))}"
    if isinstance(options.gpus, int) and options.gpus > 0:
        if options.gpus > len(gpus):
            raise LayoutError(f"--gpus {options.gpus} asks for more GPUs than the "
                              f"{len(gpus)} available ({source})")
        gpus = gpus[: options.gpus]
        source = f"--gpus {options.gpus}"
    return gpus, source


def plan_job(job: EvalJob, options: GpuOptions, inv: Inventory | None,
             sharing: int = 1) -> JobPlan:
    """``sharing``: jobs of the session that run side by side on the GPUs."""
    model = job.model
    backend = BACKENDS[model.backend]
    gpus, source = granted_gpus(inv, options)
    notes: list[str] = []
    tp = _pick("tp", options.tp, model.tp, notes)
    pp = _pick("pp", options.pp, model.pp, notes)
    dp = _pick("dp", options.dp, model.dp, notes)
    if dp is None and options.xdist_worker:
        dp = 1  # -n: xdist workers run jobs side by side, each on a group of its own
    fake = inv is not None and inv.source == "fake"
    # Ray: actors hold the group's GPUs even for a device: cpu model (logical GPUs of a
    # CPU cluster in CI); the model then runs on the CPU inside them, as with fake GPUs
    on_ray = inv is not None and inv.source == "ray"
    if not gpus or (model.device == "cpu" and not fake and not on_ray):
        # CPU: no groups to split a model over; dp replicas are processes
        if (isinstance(tp, int) and tp > 1) or (pp or 1) > 1:
            raise LayoutError(f"model {model.name!r} runs on CPU ({source}), where tp and pp "
                              "must be 1; give it GPUs (--gpus N) or drop tp/pp")
        layout = Layout(1, 1, dp or 1)
        return JobPlan(layout, [[] for _ in range(layout.dp * options.pack)], [], False,
                       backend.model_args(model.model_args, layout, False), notes=notes)
    pretrained = model.weights
    params = memory = heads = None
    revision = model.model_args.get("revision")
    local = local_model_dir(pretrained, str(revision) if revision else None)
    if local is not None:
        try:
            params = count_parameters(local)
            dtype = str(model.model_args.get("dtype", model.model_args.get("torch_dtype",
                                                                          "auto")))
            memory = estimate_memory(params, dtype, local)
        except LayoutError as exc:
            notes.append(f"no memory estimate: {exc}")
        heads = read_attention_heads(local)
    elif tp == "auto":
        raise LayoutError(f"tp: auto needs the model's config.json; {pretrained!r} is not a "
                          "local directory or a model in the local Hugging Face cache")
    if on_ray and min(g.total_memory for g in gpus) == 0 and memory is not None:
        notes.append("no memory check: Ray does not report GPU memory and this host has no "
                     "GPU to read it from; set tp yourself")
        memory = None
    layout = plan_layout(gpus_granted=len(gpus), gpu_memory=min(g.total_memory for g in gpus),
                         memory_needed=memory, tp=tp, pp=pp, dp=dp, heads=heads,
                         needs_heads_divisible=backend.splits_heads, gpus_source=source)
    candidates = make_groups(gpus, layout.group_size, None, inv)
    if dp is None and len(candidates) < layout.dp:
        # interconnect domains can leave fewer whole groups than GPUs / group size
        layout = Layout(layout.tp, layout.pp, max(1, len(candidates)))
        notes.append(f"dp={layout.dp}: groups stay inside NVLink/PCIe domains")
    if dp is None and sharing > 1 and layout.dp > 1:
        # several jobs: each takes its share of the groups and they run side by side
        # (one model load per replica instead of every job on every group in turn)
        layout = Layout(layout.tp, layout.pp, max(1, layout.dp // sharing))
        notes.append(f"dp={layout.dp}: the GPUs' groups are shared by {sharing} jobs "
                     "running side by side (--dp sets it)")
    groups = [g for g in make_groups(gpus, layout.group_size, layout.dp, inv)
              for _ in range(options.pack)]
    if on_ray:
        _check_ray_groups(groups, inv, layout.group_size)
    if options.pack > 1:
        notes.append(f"{options.pack} replicas packed on each group (--disteval-pack)")
    real = not fake and not (on_ray and model.device == "cpu")
    if on_ray and not real:
        notes.append("Ray: device: cpu, so the model runs on the CPU inside actors that "
                     "hold the group's (logical) GPUs")
    if fake:
        notes.append("fake GPU inventory: workers run on the CPU, one per group")
    if fake and model.device == "cpu":
        # the GPU form (parallelize=True) is what no run of this model gets: show the real one
        notes.append("device: cpu: each worker runs the whole model on the CPU with the "
                     "model_args below; on real GPUs this model runs on the CPU only, where "
                     "tp and pp must be 1")
    return JobPlan(layout, groups, candidates, real,
                   backend.model_args(model.model_args, layout, real), params, memory, notes,
                   gpu_args=None if real or model.device == "cpu"
                   else backend.model_args(model.model_args, layout, True))


def _check_ray_groups(groups: list[list[GPU]], inv: Inventory | None, size: int) -> None:
    """A Ray actor lives on one node: its group must fit on one."""
    if inv is None:
        return
    for group in groups:
        if len({inv.domain(g) for g in group}) > 1:
            per_node: dict[str | None, int] = {}
            for gpu in inv.gpus():
                per_node[inv.domain(gpu)] = per_node.get(inv.domain(gpu), 0) + 1
            raise LayoutError(
                f"a group of {size} GPUs does not fit on one Ray node (the largest has "
                f"{max(per_node.values())}); a group never spans nodes: lower tp x pp to "
                "at most a node's GPUs (vllm across nodes: docs/multi-node.md)")


def groups_available(options: GpuOptions) -> int | None:
    """How many groups the GPUs make (for ``-n auto``); None without GPUs."""
    try:
        gpus, _ = granted_gpus(inventory(options), options)
    except (NoGPUError, LayoutError):
        return None
    if not gpus:
        return None
    size = (options.tp if isinstance(options.tp, int) else 1) * (options.pp or 1)
    return max(1, len(gpus) // size) * options.pack


def _pick(name: str, cli: Any, suite: Any, notes: list[str]) -> Any:
    if cli is not None:
        if suite is not None and suite != cli:
            notes.append(f"{name}={cli} from the command line (the suite says {suite})")
        return cli
    return suite

