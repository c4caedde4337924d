"""Preflight checks: what is wrong with this machine, before a model spends minutes loading.

Each check is data (name, status, detail, fix). ``pytest --disteval-doctor`` prints
them all and exits; a run that uses GPUs (real or fake) runs them at its start,
and a FAIL stops the session before any worker starts (exit code EXIT_PREFLIGHT).
Runs on the CPU skip them: there is nothing to load on a GPU.

Nothing heavy is imported here: backends are found with ``find_spec`` and package
metadata, NVML through the pynvml interface (a fake stands in for tests), and
NCCL is read from torch in a subprocess with a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_disteval.backends import BACKENDS
from pytest_disteval.gpu.inventory import GPU, Inventory, NoGPUError, _import_pynvml, _text
from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.jobs.job import EvalJob, missing_data_files
from pytest_disteval.jobs.launch import OFFLINE_ENV, worker_env
from pytest_disteval.jobs.scheduler import JobScheduler
from pytest_disteval.plan.layout import LayoutError
from pytest_disteval.plan.planner import JobPlan, granted_gpus
from pytest_disteval.plan.sizing import local_model_dir
from pytest_disteval.suite.localtasks import TaskIndex
from pytest_disteval.units import format_size

PASS, WARN, FAIL = "pass", "warn", "fail"
# a session stopped by a failing preflight check: told apart from 1 (items failed)
EXIT_PREFLIGHT = 6
# below this much free space where caches, results or offload go: warn
DISK_WARN_BYTES = 10 * 2**30
NCCL_TIMEOUT_S = 60.0
# a GPU with less than this share of its memory free is used by someone else: warn
BUSY_FREE_SHARE = 0.9
# the distribution that carries each backend's version (the module name may differ)
BACKEND_DISTRIBUTIONS = {"hf": ("transformers", "accelerate"), "vllm": ("vllm",),
                         "sglang": ("sglang",), "nemo_lm": ("nemo_toolkit",)}
# dataset_path values that are lm-eval/datasets builders reading data_files, not hub ids
_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder"}

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


# where nvidia-cuda-mps-control puts its control pipe unless CUDA_MPS_PIPE_DIRECTORY says
MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, WARN or FAIL
    detail: str
    fix: str = ""


Probe = Callable[[], dict[str, Any]]
DiskUsage = Callable[[Path], int]  # free bytes at a path


@dataclass
class Doctor:
    """The checks for one session: its jobs, their plans, the inventory."""

    scheduler: JobScheduler
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    nvml: Any = None  # the pynvml module (a fake in tests); imported when real GPUs need it
    probe: Probe | None = None  # torch/CUDA/NCCL versions; default: a subprocess
    free_bytes: DiskUsage | None = None
    preflight: bool = False  # at the start of a run: only what that run needs

    def run(self) -> list[Check]:
        checks: list[Check] = []
        inv, gpus_check = self._gpus()
        checks.append(gpus_check)
        real = inv is not None and inv.source == "nvml"
        plans = self._plans()
        on_gpu = [p for p in plans.values() if isinstance(p, JobPlan) and p.groups
                  and p.groups[0]]
        if real:
            checks.extend(self._driver_and_nccl(any(p.layout.group_size > 1 for p in on_gpu)))
        checks.extend(self._backends())
        if not self.preflight:
            checks.extend(self._plan_checks(plans))
        checks.extend(self._interconnect(inv, plans))
        checks.extend(self._packing(inv, plans))
        checks.extend(self._disk())
        checks.append(self._offline())
        checks.extend(self._models())
        checks.extend(self._datasets())
        return checks

    # -- GPUs, driver, NCCL ----------------------------------------------------

    def _gpus(self) -> tuple[Inventory | None, Check]:
        options = self.scheduler.settings.gpu
        asked = ("--gpu-ids " + ",".join(map(str, options.gpu_ids)) if options.gpu_ids
                 else f"--gpus {options.gpus}" if options.gpus not in (None, "all")
                 else "all visible")
        visible = self.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        try:
            inv = self.scheduler.inventory()
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

    def _nvml(self) -> Any:
        return self.nvml if self.nvml is not None else _import_pynvml()

    def _driver_and_nccl(self, collectives: bool) -> list[Check]:
        checks = []
        driver = cuda = None
        try:
            nvml = self._nvml()
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
        wanted = collectives or not self.preflight
        probe = self._probe() if wanted else {}
        torch_cuda = _version_tuple(probe.get("cuda"))
        if driver is not None and cuda is not None:
            text = f"driver {driver}, supports CUDA {cuda[0]}.{cuda[1]}"
            if torch_cuda is not None:
                text += f"; torch {probe.get('torch')} built for CUDA {probe.get('cuda')}"
            if torch_cuda is not None and torch_cuda[0] > cuda[0]:
                checks.append(Check("driver", FAIL, text,
                                    f"install a driver for CUDA {probe.get('cuda')} or newer, "
                                    "or a torch build for this driver's CUDA"))
            elif torch_cuda is not None and torch_cuda > cuda:
                checks.append(Check("driver", WARN, text + " (newer minor: runs by CUDA minor "
                                    "version compatibility, without newer PTX features)",
                                    "update the driver if kernels fail to load"))
            else:
                checks.append(Check("driver", PASS, text))
        if not wanted:
            return checks
        if "error" in probe:
            checks.append(Check("nccl", FAIL if collectives else WARN, probe["error"],
                                "check that torch imports in the workers' interpreter "
                                f"({self.scheduler.settings.python})"))
        elif "nccl" in probe:
            checks.append(Check("nccl", PASS, f"NCCL {probe['nccl']} (torch {probe['torch']}, "
                                f"CUDA {probe.get('cuda')})"))
        else:
            checks.append(Check("nccl", FAIL if collectives else WARN,
                                f"torch {probe.get('torch')} has no NCCL "
                                f"({probe.get('nccl_error', 'CUDA build missing')})",
                                "install a CUDA build of torch (tp/pp > 1 needs NCCL)"))
        return checks

    def _probe(self) -> dict[str, Any]:
        if self.probe is not None:
            return self.probe()
        return probe_torch(self.scheduler.settings.python)

    # -- backends and plans ----------------------------------------------------

    def _jobs(self) -> list[EvalJob]:
        return list(self.scheduler.jobs.values())

    def _backends(self) -> list[Check]:
        checks = []
        version = package_version("lm_eval")
        if importlib.util.find_spec("lm_eval") is None:
            checks.append(Check("backend lm-eval", FAIL, "lm_eval is not importable",
                                "pip install 'lm-eval>=0.4.13,<0.5'"))
        else:
            checks.append(Check("backend lm-eval", PASS, f"lm-eval {version}"))
        required: dict[str, bool] = {}
        for job in self._jobs():
            required[job.model.backend] = (required.get(job.model.backend, False)
                                           or job.model.required)
        for name in sorted(required):
            backend = BACKENDS[name]
            versions = ", ".join(f"{d} {package_version(d)}" for d in BACKEND_DISTRIBUTIONS[name]
                                 if package_version(d))
            if backend.available():
                checks.append(Check(f"backend {name}", PASS, versions or backend.module))
                continue
            # not required: its items skip, as they would without the check
            checks.append(Check(f"backend {name}", FAIL if required[name] else WARN,
                                f"no module {backend.module!r}"
                                + ("; a model sets required: true" if required[name]
                                   else "; its items will be skipped"),
                                backend.install_hint))
        return checks

    def _plans(self) -> dict[str, JobPlan | LayoutError]:
        out: dict[str, JobPlan | LayoutError] = {}
        try:
            self.scheduler.plan_all()
        except (NoGPUError, ValueError):
            pass  # each job's plan says why
        for job in self._jobs():
            try:
                out[job.key] = self.scheduler.plan(job)
            except LayoutError as exc:
                out[job.key] = exc
        return out

    def _plan_checks(self, plans: Mapping[str, JobPlan | LayoutError]) -> list[Check]:
        # in a run, a layout error fails only its job's items (with this message)
        checks = []
        for key, plan in plans.items():
            if isinstance(plan, LayoutError):
                checks.append(Check(f"plan {key}", FAIL, str(plan),
                                    "see --disteval-plan and docs/layouts.md"))
            else:
                where = " | ".join(",".join(str(g.index) for g in group) or "CPU"
                                   for group in plan.groups)
                checks.append(Check(f"plan {key}", PASS, f"{plan.layout} on {where}"))
        return checks

    def _interconnect(self, inv: Inventory | None,
                      plans: Mapping[str, JobPlan | LayoutError]) -> list[Check]:
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

    def _packing(self, inv: Inventory | None,
                 plans: Mapping[str, JobPlan | LayoutError]) -> list[Check]:
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
        pipe = Path(self.environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DEFAULT))
        jobs = ", ".join(packed)
        if (pipe / "control").exists():
            return [Check("packing", PASS, f"{jobs}: packed replicas share their GPUs "
                                           f"through MPS (daemon at {pipe})")]
        return [Check("packing", WARN,
                      f"{jobs}: replicas packed on a GPU with no MPS daemon ({pipe}/control "
                      "absent): their kernels take turns on it instead of running together",
                      "start MPS before the run (nvidia-cuda-mps-control -d; "
                      "docs/layouts.md#packing-replicas-on-a-group)")]

    # -- disk, offline, models, datasets ---------------------------------------

    def _free(self, path: Path) -> int:
        if self.free_bytes is not None:
            return self.free_bytes(path)
        while not path.exists() and path.parent != path:
            path = path.parent  # a directory made later: the disk it will be made on
        return shutil.disk_usage(path).free

    def _disk(self) -> list[Check]:
        places: list[tuple[str, Path, int | None]] = [
            ("disteval dir", self.scheduler.settings.base_dir, None),
            ("HF cache", hf_hub_cache(self.environ), None),
        ]
        for job in self._jobs():
            offload = job.model.model_args.get("offload_folder")
            if isinstance(offload, str):
                places.append((f"offload {job.name}", Path(offload), _weights_size(job)))
        checks = []
        for what, path, needed in places:
            try:
                free = self._free(path)
            except OSError as exc:
                checks.append(Check(f"disk {what}", WARN, f"{path}: {exc}"))
                continue
            text = f"{format_size(free)} free at {path}"
            if needed is not None and free < needed:
                checks.append(Check(f"disk {what}", FAIL,
                                    f"{text}; the model's weights are {format_size(needed)}",
                                    "free space there or point offload_folder at a larger disk"))
            elif free < DISK_WARN_BYTES:
                checks.append(Check(f"disk {what}", WARN,
                                    f"{text} (below {format_size(DISK_WARN_BYTES)})",
                                    "free space, or move it (--disteval-dir, HF_HOME)"))
            else:
                checks.append(Check(f"disk {what}", PASS, text))
        return checks

    def _offline(self) -> Check:
        shell = ", ".join(f"{k}={self.environ[k]}" for k in OFFLINE_ENV
                          if k.endswith("OFFLINE") and k in self.environ) or "none set"
        text = ("workers run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
                f"TRANSFORMERS_OFFLINE=1 whatever the shell says (here: {shell})")
        off = self.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        if self.environ.get("HF_HUB_OFFLINE") is not None and not off:
            return Check("offline", WARN, text + "; models and datasets are not downloaded",
                         "download them beforehand (huggingface-cli download ...)")
        return Check("offline", PASS, text)

    def _models(self) -> list[Check]:
        checks = []
        done: set[tuple[str, str]] = set()
        for job in self._jobs():
            model = job.model
            if (model.backend, model.weights) in done:
                continue
            done.add((model.backend, model.weights))
            name = f"model {job.suite.path}::{job.name}"
            revision = model.model_args.get("revision")
            found = (Path(model.weights) if model.backend == "nemo_lm"
                     and Path(model.weights).exists()
                     else local_model_dir(model.weights, str(revision) if revision else None)
                     if model.backend != "nemo_lm" else None)
            if found is not None:
                kind = "HF cache snapshot" if "snapshots" in found.parts else "local path"
                checks.append(Check(name, PASS, f"{model.weights}: {kind} {found}"))
                continue
            missing_backend = not BACKENDS[model.backend].available()
            checks.append(Check(
                name, WARN if missing_backend else FAIL,
                f"{model.weights!r} is neither a local path nor in the HF cache "
                f"({hf_hub_cache(self.environ)}); the workers run offline"
                + ("; its backend is missing, so its items skip anyway" if missing_backend
                   else ""),
                f"where there is network: huggingface-cli download {model.weights}"
                + (f" --revision {revision}" if revision else "")
                + " (set HF_HOME to the cache the workers see), or give a local path"))
        return checks

    def _datasets(self) -> list[Check]:
        checks = []
        builtin: TaskIndex | None = None
        done: set[tuple[str, str]] = set()
        for job in self._jobs():
            for entry in job.entries:
                key = (str(job.suite.workdir), entry.task)
                if key in done:
                    continue
                done.add(key)
                name = f"dataset {entry.task}"
                local = entry.local
                if local is None:
                    builtin = builtin or _builtin_index()
                    local = builtin.get(entry.task) if builtin is not None else None
                    if local is None:
                        checks.append(Check(name, WARN, "not a local task and not found among "
                                            "lm-eval's built-in tasks",
                                            "check the name (lm-eval --tasks list), or add "
                                            "its YAML directory to the suite's include"))
                        continue
                missing = missing_data_files(entry, job.suite.workdir) if entry.local else []
                if missing:
                    checks.append(Check(name, FAIL, f"{local.path} reads {', '.join(missing)}, "
                                        f"not found under {job.suite.workdir}",
                                        "fix data_files, or the suite's workdir"))
                    continue
                checks.append(_dataset_check(name, local.dataset_path(), local.data_files(),
                                             job.suite.workdir, self.environ))
        return checks


# ---------------------------------------------------------------------------- helpers


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


def _group_link(key: str, group: list[GPU], inv: Inventory, tp: int) -> Check:
    name = f"interconnect {key}"
    gpus = ",".join(str(g.index) for g in group)
    domains = {inv.domain(g) for g in group}
    fix = ("keep tp inside an NVLink domain: a smaller --tp with more dp, or pp across "
           "the PCIe boundary (--pp)")
    if None in domains:
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {gpus}: interconnect unknown (the inventory reports no topology)",
                     "check nvidia-smi topo -m" if tp > 1 else "")
    if len(domains) > 1:
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {gpus}: the group crosses interconnect domains "
                     f"({', '.join(sorted(d for d in domains if d))})", fix if tp > 1 else "")
    (domain,) = domains
    if str(domain).startswith("pcie"):
        return Check(name, WARN if tp > 1 else PASS,
                     f"GPUs {gpus}: PCIe (one host bridge, no NVLink); tp={tp} all-reduces "
                     "over PCIe", fix if tp > 1 else "")
    # NVML domains are named nvlink-N; a fake inventory's domains stand for NVLink ones
    return Check(name, PASS, f"GPUs {gpus}: NVLink (domain {domain})")


def hf_hub_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_HUB_CACHE") or environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "hub")


def hf_datasets_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_DATASETS_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "datasets")


def _dataset_check(name: str, dataset_path: str | None, data_files: list[str], workdir: Path,
                   environ: Mapping[str, str]) -> Check:
    if dataset_path is None or dataset_path in _BUILDERS:
        what = ", ".join(data_files) if data_files else "no data files"
        return Check(name, PASS, f"local data files: {what}")
    if (workdir / dataset_path).exists():
        return Check(name, PASS, f"local dataset {workdir / dataset_path}")
    hub = hf_hub_cache(environ) / f"datasets--{dataset_path.replace('/', '--')}"
    built = hf_datasets_cache(environ) / dataset_path.replace("/", "___")
    found = [p for p in (hub, built) if p.exists()]
    if found:
        return Check(name, PASS, f"{dataset_path}: in the cache ({found[0]})")
    # a WARN, not a FAIL: datasets' cache layouts differ between versions
    return Check(name, WARN, f"{dataset_path}: not in the HF hub cache ({hub.parent}) nor the "
                 f"datasets cache ({built.parent}); the workers run offline",
                 f"where there is network: huggingface-cli download --repo-type dataset "
                 f"{dataset_path} (or run the task once online with the same HF_HOME)")


def _builtin_index() -> TaskIndex | None:
    """lm-eval's own task YAMLs, indexed by regex without importing lm-eval (~3 s)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return TaskIndex([Path(list(spec.submodule_search_locations)[0]) / "tasks"])


def _weights_size(job: EvalJob) -> int | None:
    path = local_model_dir(job.model.weights)
    if path is None or not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.suffix in {".safetensors", ".bin", ".pt", ".gguf"} and p.is_file()) or None


# ---------------------------------------------------------------------------- output


def render(checks: Iterable[Check], *, only_problems: bool = False) -> list[str]:
    rows = [c for c in checks if not (only_problems and c.status == PASS)]
    if not rows:
        return []
    width = max(len(c.name) for c in rows)
    lines = []
    for c in rows:
        lines.append(f"{c.status.upper():4}  {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != PASS:
            lines.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
    return lines


def counts(checks: Iterable[Check]) -> str:
    checks = list(checks)
    return ", ".join(f"{sum(c.status == s for c in checks)} {word}"
                     for s, word in ((PASS, "passed"), (WARN, "warnings"), (FAIL, "failed")))


def failure_message(checks: list[Check], *, listed: bool = False) -> str:
    """Why the session stops; ``listed``: the failed checks were printed already."""
    failed = [c for c in checks if c.status == FAIL]
    head = (f"disteval preflight: {len(failed)} check(s) failed "
            f"({', '.join(c.name for c in failed)}); no model was loaded")
    if listed:
        return f"{head}; the fixes are listed above (pytest --disteval-doctor shows every check)"
    return "\n".join([head, *render(failed), "pytest --disteval-doctor shows every check"])
