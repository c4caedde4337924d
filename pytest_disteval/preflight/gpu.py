"""GPU checks: the GPUs granted, the driver against torch's CUDA, NCCL, links, packing.

NVML is read through the pynvml interface (a fake stands in for tests), and torch's
CUDA and NCCL versions in a child process with a timeout: the pytest process never
imports torch.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_disteval.gpu.inventory import GPU, Inventory, NoGPUError, _import_pynvml, _text
from pytest_disteval.jobs.launch import worker_env
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.plan.planner import JobPlan, granted_gpus
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check
from pytest_disteval.units import format_size

NCCL_TIMEOUT_S = 60.0
# a GPU with less than this share of its memory free is used by someone else: warn
BUSY_FREE_SHARE = 0.9
# where nvidia-cuda-mps-control puts its control pipe unless CUDA_MPS_PIPE_DIRECTORY says
MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"

_PROBE = """\
import json, torch
out = {"torch": torch.__version__, "cuda": torch.version.cuda}
try:
    v = torch.cuda.nccl.version()
    out["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
except Exception as exc:
    out["nccl_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

Probe = Callable[[], dict[str, Any]]
Plans = Mapping[str, JobPlan | LayoutError]  # job key -> its plan, or why it has none


def gpus(scheduler: JobScheduler, environ: Mapping[str, str]) -> tuple[Inventory | None, Check]:
    """The inventory (None on the CPU) and the check of the GPUs the session is granted."""
    options = scheduler.settings.gpu
    asked = ("--gpu-ids " + ",".join(map(str, options.gpu_ids)) if options.gpu_ids
             else f"--gpus {options.gpus}" if options.gpus not in (None, "all")
             else "all visible")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    try:
        inv = scheduler.inventory()
    except NoGPUError as exc:
        return None, Check("gpus", FAIL, f"{asked} requested, but {exc}",
                           "check nvidia-smi on this machine, or run on the CPU "
                           "with --gpus 0")
    except ValueError as exc:  # a bad CUDA_VISIBLE_DEVICES entry
        return None, Check("gpus", FAIL, str(exc),
                           "fix CUDA_VISIBLE_DEVICES (indices or UUIDs of nvidia-smi -L)")
    if inv is None:
        why = "--gpus 0" if options.gpus == 0 else "no GPU visible to NVML"
        return None, Check("gpus", PASS, f"{why}: models run on the CPU{seen}")
    try:
        granted, source = granted_gpus(inv, options)
    except LayoutError as exc:
        return inv, Check("gpus", FAIL, f"{exc}{seen}",
                          f"ask for at most {len(inv.gpus())} GPUs, or make more visible "
                          "(CUDA_VISIBLE_DEVICES)")
    names = ", ".join(sorted({g.name for g in granted})) or "none"
    if not granted:
        return inv, Check("gpus", FAIL, f"{len(inv.gpus())} visible ({inv.source}), none "
                          f"granted ({source}){seen}",
                          "unset CUDA_VISIBLE_DEVICES or ask for GPUs with --gpus N")
    text = (f"{len(granted)} of {len(inv.gpus())} visible GPUs used ({source}; "
            f"{names}){seen}")
    # memory taken before the run (another process, a stale worker) unbalances groups
    busy = [g for g in granted if g.free_memory < BUSY_FREE_SHARE * g.total_memory]
    if busy:
        taken = ", ".join(f"GPU {g.index} has {format_size(g.free_memory)} of "
                          f"{format_size(g.total_memory)} free" for g in busy)
        return inv, Check("gpus", WARN, f"{text}; {taken}",
                          "see nvidia-smi for the other processes, or leave those GPUs "
                          "out (--gpu-ids, CUDA_VISIBLE_DEVICES)")
    return inv, Check("gpus", PASS, text)


def driver_and_nccl(nvml: Any, probe: Probe, *, collectives: bool, every: bool,
                    python: str) -> list[Check]:
    """The driver's CUDA against torch's, and NCCL where a group spans GPUs (or ``every``).

    ``nvml`` is the pynvml module, or None to import it; ``python`` the workers'
    interpreter, named in the fix when torch does not import there.
    """
    checks = []
    driver = cuda = None
    try:
        nvml = nvml if nvml is not None else _import_pynvml()
        nvml.nvmlInit()
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            raw = int(nvml.nvmlSystemGetCudaDriverVersion())
            cuda = (raw // 1000, (raw % 1000) // 10)
        finally:
            nvml.nvmlShutdown()
    except Exception as exc:  # NVMLError and friends: the driver cannot be read
        checks.append(Check("driver", FAIL, f"NVML cannot read the driver: {exc}",
                            "check nvidia-smi; reinstall the NVIDIA driver"))
    # NCCL only matters when a group spans GPUs; the doctor always shows it
    wanted = collectives or every
    found = probe() if wanted else {}
    torch_cuda = _version_tuple(found.get("cuda"))
    if driver is not None and cuda is not None:
        text = f"driver {driver}, supports CUDA {cuda[0]}.{cuda[1]}"
        if torch_cuda is not None:
            text += f"; torch {found.get('torch')} built for CUDA {found.get('cuda')}"
        if torch_cuda is not None and torch_cuda[0] > cuda[0]:
            checks.append(Check("driver", FAIL, text,
                                f"install a driver for CUDA {found.get('cuda')} or newer, "
                                "or a torch build for this driver's CUDA"))
        elif torch_cuda is not None and torch_cuda > cuda:
            checks.append(Check("driver", WARN, text + " (newer minor: runs by CUDA minor "
                                "version compatibility, without newer PTX features)",
                                "update the driver if kernels fail to load"))
        else:
            checks.append(Check("driver", PASS, text))
    if not wanted:
        return checks
    if "error" in found:
        checks.append(Check("nccl", FAIL if collectives else WARN, found["error"],
                            f"check that torch imports in the workers' interpreter ({python})"))
    elif "nccl" in found:
        checks.append(Check("nccl", PASS, f"NCCL {found['nccl']} (torch {found['torch']}, "
                            f"CUDA {found.get('cuda')})"))
    else:
        checks.append(Check("nccl", FAIL if collectives else WARN,
                            f"torch {found.get('torch')} has no NCCL "
                            f"({found.get('nccl_error', 'CUDA build missing')})",
                            "install a CUDA build of torch (tp/pp > 1 needs NCCL)"))
    return checks


def probe_torch(python: str, timeout: float = NCCL_TIMEOUT_S) -> dict[str, Any]:
    """torch, its CUDA and NCCL versions, read in a child: the pytest process stays light."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=timeout, env=worker_env(), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"reading NCCL from torch took over {timeout:.0f}s (a hung CUDA "
                         "driver or a very slow import)"}
    except OSError as exc:
        return {"error": f"cannot start {python}: {exc}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"torch does not import in {python}: {last}"}
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": f"unexpected output of the torch probe: {done.stdout[-200:]!r}"}


def _version_tuple(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def interconnect(inv: Inventory | None, plans: Plans) -> list[Check]:
    """Per job on GPUs: do its groups' GPUs talk over NVLink, or over PCIe / across domains?"""
    if inv is None:
        return []
    checks = []
    for key, plan in plans.items():
        if isinstance(plan, LayoutError) or not plan.groups or not plan.groups[0]:
            continue
        if plan.layout.group_size == 1:
            checks.append(Check(f"interconnect {key}", PASS,
                                "one GPU per group: no collectives inside a group"))
            continue
        seen: set[tuple[str, ...]] = set()
        links = []
        for group in plan.groups:
            ids = tuple(g.uuid for g in group)
            if ids not in seen:  # packed replicas share a group
                seen.add(ids)
                links.append(_group_link(key, group, inv, plan.layout.tp))
        passed = [c for c in links if c.status == PASS]
        if len(passed) > 1:  # one line for the groups that are fine
            links = [Check(passed[0].name, PASS, "; ".join(c.detail for c in passed)),
                     *(c for c in links if c.status != PASS)]
        checks.extend(links)
    return checks


def _group_link(key: str, group: list[GPU], inv: Inventory, tp: int) -> Check:
    name = f"interconnect {key}"
    ids = ",".join(str(g.index) for g in group)
    domains = {inv.domain(g) for g in group}
    fix = ("keep tp inside an NVLink domain: a smaller --tp with more dp, or pp across "
           "the PCIe boundary (--pp)")
    if None in domains:
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {ids}: interconnect unknown (the inventory reports no topology)",
                     "check nvidia-smi topo -m" if tp > 1 else "")
    if len(domains) > 1:
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {ids}: the group crosses interconnect domains "
                     f"({', '.join(sorted(d for d in domains if d))})", fix if tp > 1 else "")
    (domain,) = domains
    if str(domain).startswith("pcie"):
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {ids}: PCIe (one host bridge, no NVLink); tp={tp} all-reduces "
                     "over PCIe", fix if tp > 1 else "")
    # NVML domains are named nvlink-N; a fake inventory's domains stand for NVLink ones
    return Check(name, PASS, f"GPUs {ids}: NVLink (domain {domain})")


def packing(inv: Inventory | None, plans: Plans, environ: Mapping[str, str]) -> list[Check]:
    """Replicas packed on a real GPU: is the MPS daemon there to run them side by side?

    Without it the GPU time-slices between processes, a few milliseconds each: on
    the H200 four packed shards took as long as one replica doing all the work
    (docs/benchmarks.md, section 7).
    """
    if inv is None or inv.source != "nvml":
        return []
    packed = [key for key, plan in plans.items() if isinstance(plan, JobPlan)
              and plan.groups and plan.groups[0]
              and len({tuple(g.uuid for g in group) for group in plan.groups})
              < len(plan.groups)]
    if not packed:
        return []
    pipe = Path(environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DEFAULT))
    jobs = ", ".join(packed)
    if (pipe / "control").exists():
        return [Check("packing", PASS, f"{jobs}: packed replicas share their GPUs "
                                       f"through MPS (daemon at {pipe})")]
    return [Check("packing", WARN,
                  f"{jobs}: replicas packed on a GPU with no MPS daemon ({pipe}/control "
                  "absent): their kernels take turns on it instead of running together",
                  "start MPS before the run (nvidia-cuda-mps-control -d; "
                  "docs/layouts.md#packing-replicas-on-a-group)")]
