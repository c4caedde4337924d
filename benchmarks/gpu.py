"""One GPU, one command: plain lm-eval vs the plugin, packing, batch sizes, hf vs vllm.

    python benchmarks/gpu.py --rounds 2 --out results/            # on a GPU machine
    python benchmarks/gpu.py --only core,pack --rounds 1           # a subset
    python benchmarks/gpu.py --quick                               # a CPU check of the script

The job is realistic.py's: a random 1.1B Llama (bf16) on ``bench_mc`` (1,000
documents, ~400-token contexts, 4 choices: 4,000 loglikelihood requests) and
``bench_gen`` (500 greedy generations of up to 32 tokens). Each run is a whole
process, timed from start to exit, with an NVML sampler (0.2 s) beside it.
Rounds alternate their order so drift hits every run alike.

runs (``--only`` takes names or their groups: core, pack, start, mps, batch, vllm, gen):

  core   lm_eval-hf      ``lm_eval run --model hf`` (batch 64) on bench_mc, as users run it
         plugin-hf       ``pytest <suite> --gpus 1`` on an empty store (cold), workers
                         forked (``--disteval-worker-start=forkserver``, as auto does;
                         also pack)
         plugin-hf-warm  the same command again, answered from the store
  pack   plugin-hf-pack2, -pack4, -pack8   2 / 4 / 8 replicas packed on the GPU (cold)
  start  plugin-hf-subprocess, plugin-hf-pack4-subprocess   the same with
         --disteval-worker-start=subprocess: every worker imports torch,
         transformers and lm-eval itself (the default forks them from one server)
  mps    plugin-hf-mps, plugin-hf-pack4-mps, plugin-hf-pack8-mps   one and 4 / 8
         packed replicas with NVIDIA's MPS daemon up, started before and quit after
         each run (a user process: the card's compute mode is left as found)
  batch  plugin-hf-bs16, plugin-hf-bs256    other batch sizes (cold)
  vllm   plugin-vllm     the vllm backend on bench_mc (enforce_eager: no compile cache
                         is kept between machines, so the first start would compile)
  gen    plugin-hf-gen, plugin-vllm-gen     bench_gen on hf (batch 64) and vllm

Tokens: the tokenizer is a character tokenizer, so a request's tokens are its
characters: context + continuation for bench_mc, prompt + generated for bench_gen
(generated counted as max_gen_toks: a random model never emits the stop string).
Prints a table (wall, requests/s, tokens/s, mean GPU utilisation, GPU busy seconds
(wall x utilisation), peak GPU memory)
and the ratios against the targets; ``--out`` keeps JSON and the workers' timing lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, worker_lines  # noqa: E402
from realistic import make_model, make_tasks  # noqa: E402

GROUPS = {"core": ["lm_eval-hf", "plugin-hf", "plugin-hf-warm"],
          "pack": ["plugin-hf-pack2", "plugin-hf-pack4", "plugin-hf-pack8"],
          "start": ["plugin-hf-subprocess", "plugin-hf-pack4-subprocess"],
          # the same single and packed runs with the MPS daemon up (started and quit
          # around each run, alternating with the runs above)
          "mps": ["plugin-hf-mps", "plugin-hf-pack4-mps", "plugin-hf-pack8-mps"],
          "batch": ["plugin-hf-bs16", "plugin-hf-bs256"],
          "vllm": ["plugin-vllm"],
          "gen": ["plugin-hf-gen", "plugin-vllm-gen"]}
TARGETS = [  # (label, numerator run, denominator run, kind, bound)
    ("plugin cold / plain lm_eval (wall)", "plugin-hf", "lm_eval-hf", "<=", 1.05),
    ("warm rerun / cold run (wall)", "plugin-hf-warm", "plugin-hf", "<=", 0.10),
    ("pack 2 throughput / plain lm_eval", "lm_eval-hf", "plugin-hf-pack2", ">=", 1.5),
    ("pack 4 throughput / plain lm_eval", "lm_eval-hf", "plugin-hf-pack4", ">=", 1.5),
    ("pack 8 throughput / plain lm_eval", "lm_eval-hf", "plugin-hf-pack8", ">=", 1.5),
    ("forked / subprocess workers, cold", "plugin-hf", "plugin-hf-subprocess", "", None),
    ("forked / subprocess workers, pack 4", "plugin-hf-pack4", "plugin-hf-pack4-subprocess",
     "", None),
    ("pack 4 with MPS throughput / plain lm_eval", "lm_eval-hf", "plugin-hf-pack4-mps", ">=",
     1.5),
    ("pack 8 with MPS throughput / plain lm_eval", "lm_eval-hf", "plugin-hf-pack8-mps", ">=",
     1.5),
    ("MPS / no MPS, one replica", "plugin-hf-mps", "plugin-hf", "", None),
    ("MPS / no MPS, pack 4", "plugin-hf-pack4-mps", "plugin-hf-pack4", "", None),
    ("vllm / hf wall, bench_mc", "plugin-vllm", "plugin-hf", "", None),
    ("vllm / hf wall, bench_gen", "plugin-vllm-gen", "plugin-hf-gen", "", None),
]


class Sampler:
    """NVML utilisation and memory of one GPU (or all: ``index=None``) every ``period`` s.

    Each sample is (mean utilisation over the GPUs, memory used on the fullest GPU).
    """

    def __init__(self, index: int | None = 0, period: float = 0.2) -> None:
        self.samples: list[tuple[float, int]] = []
        self.period = period
        self._stop = threading.Event()
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml: Any = pynvml
            indices = range(pynvml.nvmlDeviceGetCount()) if index is None else [index]
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self.handle = self.handles[0]
        except Exception:  # no GPU (--quick on a CPU): no samples
            self.nvml = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while self.nvml is not None and not self._stop.is_set():
            utils = [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            mems = [self.nvml.nvmlDeviceGetMemoryInfo(h).used for h in self.handles]
            self.samples.append((statistics.fmean(utils), max(mems)))
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, idle_mem: int) -> dict[str, float | None]:
        if not self.samples:
            return {"mean_util_pct": None, "peak_mem_gib": None}
        return {"mean_util_pct": round(statistics.fmean(u for u, _ in self.samples), 1),
                "peak_mem_gib": round((max(m for _, m in self.samples) - idle_mem) / 2**30, 2)}


def suite_text(name: str, backend: str, model: Path, task: str, batch: str,
               device: str | None) -> str:
    if backend == "vllm":
        args = (f"{{pretrained: {model}, dtype: bfloat16, gpu_memory_utilization: 0.5, "
                "enforce_eager: true, max_model_len: 2048}")
    else:
        args = f"{{pretrained: {model}, dtype: bfloat16}}"
    dev = f"    device: {device}\n" if device else ""
    return (f"disteval: 1\ninclude: [tasks]\nmodels:\n  - name: {name}\n    backend: {backend}\n"
            f"    model_args: {args}\n    batch_size: {batch}\n{dev}"
            f"tasks:\n  - task: {task}\n    thresholds: {{{_metric(task)}: 0.0}}\n")


def _metric(task: str) -> str:
    return "acc" if task == "bench_mc" else "exact_match"


def task_tokens(suite_dir: Path, task: str, max_gen_toks: int = 32) -> tuple[int, int]:
    """(requests, tokens) of a task: one character is one token."""
    rows = [json.loads(line) for line in
            (suite_dir / "data" / f"{task}.jsonl").read_text().splitlines()]
    if task == "bench_mc":
        return (sum(len(r["choices"]) for r in rows),
                sum(len(r["context"]) + len(" " + c) for r in rows for c in r["choices"]))
    return len(rows), sum(len(r["context"]) + max_gen_toks for r in rows)


def plan_runs(work: Path, suite_dir: Path, model: Path, quick: bool) -> dict[str, dict[str, Any]]:
    py = sys.executable
    device = "cpu" if quick else None
    gpus = ["--gpus", "0"] if quick else ["--gpus", "1"]
    runs: dict[str, dict[str, Any]] = {
        "lm_eval-hf": {"task": "bench_mc", "cwd": suite_dir, "command": [
            py, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
            f"pretrained={model},dtype=bfloat16", "--tasks", "bench_mc", "--include_path",
            str(suite_dir / "tasks"), "--batch_size", "64", "--device",
            "cpu" if quick else "cuda:0", "--output_path", "{out}"]},
    }

    def plugin(name: str, backend: str, task: str, batch: str, extra: list[str],
               mps: bool = False) -> None:
        suite = suite_dir / f"{name}.yaml"
        suite.write_text(suite_text(name, backend, model, task, batch, device))
        runs[name] = {"task": task, "cwd": suite_dir, "mps": mps, "command": [
            py, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(suite), *gpus,
            "--disteval-dir={out}", *extra]}

    # forked workers, named (auto forks them too): the "start" group runs the same
    # with subprocesses
    fork = ["--disteval-worker-start=forkserver"]
    plugin("plugin-hf", "hf", "bench_mc", "64", fork)
    runs["plugin-hf-warm"] = dict(runs["plugin-hf"], warm_of="plugin-hf")
    for n in (2, 4, 8):
        plugin(f"plugin-hf-pack{n}", "hf", "bench_mc", "64", ["--disteval-pack", str(n), *fork])
    # the same runs with every worker importing everything itself (the forkserver off)
    plugin("plugin-hf-subprocess", "hf", "bench_mc", "64", ["--disteval-worker-start=subprocess"])
    plugin("plugin-hf-pack4-subprocess", "hf", "bench_mc", "64",
           ["--disteval-pack", "4", "--disteval-worker-start=subprocess"])
    plugin("plugin-hf-mps", "hf", "bench_mc", "64", fork, mps=True)
    for n in (4, 8):
        plugin(f"plugin-hf-pack{n}-mps", "hf", "bench_mc", "64",
               ["--disteval-pack", str(n), *fork], mps=True)
    for bs in (16, 256):
        plugin(f"plugin-hf-bs{bs}", "hf", "bench_mc", str(bs), [])
    plugin("plugin-vllm", "vllm", "bench_mc", "auto", [])
    plugin("plugin-hf-gen", "hf", "bench_gen", "64", [])
    plugin("plugin-vllm-gen", "vllm", "bench_gen", "auto", [])
    return runs


def wait_for_idle(idle_mem: int, limit_s: float = 60.0) -> float:
    """Seconds until the GPU's memory is back near idle after the previous run.

    A process's GPU memory is freed some time after it exits; vLLM refuses to start
    while less than gpu_memory_utilization x total is free (seen on the H200: the
    run after a 75 GiB hf generation found 63.6 GiB free and stopped).
    """
    sampler = Sampler()
    if sampler.nvml is None:
        return 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        if sampler.nvml.nvmlDeviceGetMemoryInfo(sampler.handle).used <= idle_mem + 2**30:
            break
        time.sleep(0.5)
    return round(time.perf_counter() - start, 1)


class Mps:
    """The MPS control daemon for one run: a user process, started and quit around it.

    It changes no setting of the card (compute mode stays as found); while it runs,
    the CUDA processes of this user share the GPU through one MPS server instead of
    taking turns in time slices.
    """

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.control = shutil.which("nvidia-cuda-mps-control")
        self.env = {**env, "CUDA_MPS_PIPE_DIRECTORY": str(work / "mps-pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(work / "mps-log")}

    def __enter__(self) -> dict[str, str]:
        if self.control is None:
            raise RuntimeError("nvidia-cuda-mps-control not found: no MPS runs here")
        for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            Path(self.env[key]).mkdir(parents=True, exist_ok=True)
        subprocess.run([self.control, "-d"], env=self.env, check=True)
        return self.env

    def __exit__(self, *exc: object) -> None:
        assert self.control is not None
        subprocess.run([self.control], input="quit\n", text=True, env=self.env, check=False)
        pipe = Path(self.env["CUDA_MPS_PIPE_DIRECTORY"]) / "control"
        deadline = time.perf_counter() + 30
        while pipe.exists() and time.perf_counter() < deadline:
            time.sleep(0.2)  # the next run must not find the daemon still there


def run_once(name: str, spec: dict[str, Any], out: Path, log: Path, env: dict[str, str],
             idle_mem: int) -> dict[str, Any]:
    command = [c.replace("{out}", str(out)) for c in spec["command"]]
    waited = wait_for_idle(idle_mem)
    mps = Mps(out.parent, env) if spec.get("mps") else contextlib.nullcontext(env)
    with mps as run_env:  # the daemon is up before the clock starts, as a user's would be
        start = time.perf_counter()
        with Sampler() as sampler, log.open("w") as handle:
            rc = subprocess.call(command, cwd=spec["cwd"], env=run_env, stdout=handle,
                                 stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
    row: dict[str, Any] = {"run": name, "wall_s": round(wall, 2),
                           "returncode": rc, "waited_for_idle_s": waited,
                           **sampler.summary(idle_mem)}
    if rc != 0:
        print(log.read_text()[-3000:], flush=True)
    row["score"] = read_score(name, spec["task"], out)
    return row


def read_score(name: str, task: str, out: Path) -> float | None:
    pattern = "**/results_*.json" if name.startswith("lm_eval") else "results/**/*.json"
    for path in sorted(out.glob(pattern)):
        data = json.loads(path.read_text())
        table = data.get("results", {}).get(task, {})
        for key, value in table.items():
            if key.split(",")[0] == _metric(task) and isinstance(value, float):
                return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="core,pack,batch,vllm,gen",
                        help="run names or groups, comma-separated (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model on the CPU, few documents: checks the script")
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/disteval-gpu"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    wanted: list[str] = []
    for word in args.only.split(","):
        wanted += GROUPS.get(word, [word] if word else [])
    if args.quick:
        wanted = [w for w in wanted if "vllm" not in w]
    if "plugin-hf-warm" in wanted and "plugin-hf" not in wanted:
        wanted.insert(wanted.index("plugin-hf-warm"), "plugin-hf")
    docs = args.docs or (40 if args.quick else 1000)
    work = args.work
    suite_dir = work / "suite"
    t0 = time.perf_counter()
    model = make_model(work / ("llama-tiny" if args.quick else "llama-1.1b"),
                       "tiny" if args.quick else "1.1b",
                       device="cpu" if args.quick else "cuda")
    make_tasks(suite_dir, docs=docs, gen_docs=docs // 2)
    runs = plan_runs(work, suite_dir, model, args.quick)
    unknown = [w for w in wanted if w not in runs]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {sorted(runs)} and groups "
                         f"{sorted(GROUPS)}")
    no_mps = [w for w in wanted if runs[w].get("mps")]
    if no_mps and (args.quick or shutil.which("nvidia-cuda-mps-control") is None):
        print(f"skipped {no_mps}: no MPS on {'the CPU' if args.quick else 'this machine'}")
        wanted = [w for w in wanted if w not in no_mps]
    print(f"model and tasks ready in {time.perf_counter() - t0:.1f}s", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "PYTHONUNBUFFERED": "1"}
    idle = Sampler()
    idle_mem = (idle.nvml.nvmlDeviceGetMemoryInfo(idle.handle).used
                if idle.nvml is not None else 0)
    info = machine_info()
    if idle.nvml is not None:
        gpu_name = idle.nvml.nvmlDeviceGetName(idle.handle)
        info["gpu"] = gpu_name if isinstance(gpu_name, str) else gpu_name.decode()
    rows: list[dict[str, Any]] = []
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    order = [w for w in wanted if w != "plugin-hf-warm"]  # warm runs right after its cold
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            out = work / f"out-{name}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            for this in [name] + (["plugin-hf-warm"] if name == "plugin-hf"
                                  and "plugin-hf-warm" in wanted else []):
                row = run_once(this, runs[this], out, logs / f"{this}-{r}.log", env, idle_mem)
                row["round"] = r
                rows.append(row)
                if args.out:  # row by row: a call cut short keeps what it measured
                    args.out.mkdir(parents=True, exist_ok=True)
                    with (args.out / "rows.jsonl").open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                print(f"round {r} {this:16s} wall {row['wall_s']:7.1f}s  util "
                      f"{row['mean_util_pct']}%  peak {row['peak_mem_gib']} GiB  "
                      f"score {row['score']}  rc {row['returncode']}", flush=True)
    table = summarise(rows, runs, suite_dir)
    ratios = ratio_lines(table)
    print("\n" + "\n".join(render(table) + [""] + ratios))
    failed = [r for r in rows if r["returncode"] != 0]
    lines = worker_lines(sorted(work.glob("out-*/logs/*.log")))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(
            {"machine": info, "docs": docs, "rows": rows, "table": table,
             "ratios": ratios}, indent=1))
        (args.out / "gpu-workers.txt").write_text("\n".join(lines) + "\n")
    if failed:
        raise SystemExit(f"BENCHMARK FAILED: {[r['run'] for r in failed]} exited non-zero")


def summarise(rows: list[dict[str, Any]], runs: dict[str, dict[str, Any]],
              suite_dir: Path) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name and r["returncode"] == 0]
        if not mine:
            continue
        wall = statistics.median(r["wall_s"] for r in mine)
        requests, tokens = task_tokens(suite_dir, runs[name]["task"])
        utils = [r["mean_util_pct"] for r in mine if r["mean_util_pct"] is not None]
        mems = [r["peak_mem_gib"] for r in mine if r["peak_mem_gib"] is not None]
        table[name] = {"wall_s": wall, "requests_per_s": round(requests / wall, 1),
                       "tokens_per_s": round(tokens / wall), "rounds": len(mine),
                       "mean_util_pct": round(statistics.fmean(utils), 1) if utils else None,
                       # seconds some kernel ran: the same for every run of one job
                       # once the GPU's own work is what bounds it (docs/benchmarks.md §7)
                       "gpu_busy_s": (round(statistics.median(
                           r["wall_s"] * r["mean_util_pct"] / 100 for r in mine
                           if r["mean_util_pct"] is not None), 1) if utils else None),
                       "peak_mem_gib": max(mems) if mems else None,
                       "scores": [r["score"] for r in mine]}
    return table


def render(table: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"{'run':<17}{'wall s':>8}{'req/s':>9}{'tok/s':>10}{'util %':>8}{'busy s':>8}"
           f"{'peak GiB':>10}  score"]
    for name, t in table.items():
        util = "-" if t["mean_util_pct"] is None else f"{t['mean_util_pct']:.1f}"
        busy = "-" if t.get("gpu_busy_s") is None else f"{t['gpu_busy_s']:.1f}"
        mem = "-" if t["peak_mem_gib"] is None else f"{t['peak_mem_gib']:.1f}"
        scores = ", ".join("-" if s is None else f"{s:.4f}" for s in t["scores"])
        out.append(f"{name:<17}{t['wall_s']:>8.1f}{t['requests_per_s']:>9.1f}"
                   f"{t['tokens_per_s']:>10}{util:>8}{busy:>8}{mem:>10}  {scores}")
    return out


def ratio_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    out = ["ratios of median wall times                 value   target   verdict"]
    for label, num, den, kind, bound in TARGETS:
        if num not in table or den not in table:
            continue
        value = table[num]["wall_s"] / table[den]["wall_s"]
        verdict = ""
        if bound is not None:
            ok = value <= bound if kind == "<=" else value >= bound
            verdict = "PASS" if ok else "MISS"
        target = f"{kind} {bound}" if bound is not None else ""
        out.append(f"  {label:<40}{value:>7.3f}   {target:<8} {verdict}")
    return out


if __name__ == "__main__":
    main()
