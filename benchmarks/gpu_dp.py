"""One GPU: plain lm_eval vs the plugin with 1 replica and with replicas packed on the GPU.

    python benchmarks/gpu_dp.py --rounds 2 --out results/

Builds (once, in --work) a random-initialised 1.1B Llama-shaped checkpoint (realistic.py: hidden
2048, 22 layers, vocab 32000, bf16) and a local
multiple-choice task of 1,000 documents with ~400-token contexts and 4 choices
(4,000 loglikelihood requests): the reference job of ../shared/gpu/README.md. Scores
are meaningless; times, memory and utilisation are real. Each round runs, in
alternating order, whole processes:

  lm_eval   plain ``lm_eval run --model hf`` (batch 64), as users run it
  plugin-1  ``pytest <suite> --gpus 1``: one replica (dp 1)
  plugin-N  ``pytest <suite> --gpus 1 --disteval-pack N``: N replicas packed on the GPU

The plugin runs with --disteval-no-cache (cold: nothing reused). An NVML sampler
records GPU utilisation and memory every 0.2 s. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import worker_lines  # noqa: E402
from gpu import Sampler  # noqa: E402
from realistic import make_model, make_tasks  # noqa: E402


def make_suite(suite_dir: Path, model: Path) -> Path:
    path = suite_dir / "bench.yaml"
    path.write_text(f"""\
disteval: 1
include: [tasks]
models:
  - name: llama-1.1b
    backend: hf
    model_args: {{pretrained: {model}, dtype: bfloat16}}
    batch_size: 64
tasks:
  - task: bench_mc
    thresholds: {{acc: 0.0}}
""")
    return path


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    start = time.perf_counter()
    with log.open("w") as handle:
        rc = subprocess.call(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if rc != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"failed ({rc}): {' '.join(command)}")
    return {"wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--packs", default="2,4")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="an extra plugin run, e.g. 'dp2=--gpus 2' or 'tp2=--gpus 2 --tp 2'")
    parser.add_argument("--no-lm-eval", action="store_true")
    parser.add_argument("--first-round", type=int, default=0,
                        help="continue an earlier run: odd rounds run in reverse order")
    parser.add_argument("--docs", type=int, default=1000,
                        help="documents of the task (4 loglikelihood requests each)")
    parser.add_argument("--work", type=Path, default=None,
                        help="default: /tmp/disteval-gpu-bench-<docs>")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(f"/tmp/disteval-gpu-bench-{args.docs}")
    suite_dir = work / "suite"
    model = Path("/tmp/disteval-gpu-model/llama-1.1b")
    t0 = time.perf_counter()
    make_model(model, "1.1b")
    make_tasks(suite_dir, docs=args.docs, gen_docs=0)
    suite = make_suite(suite_dir, model)
    print(f"model and task ready in {time.perf_counter() - t0:.1f}s", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    py = sys.executable
    runs = {
        "lm_eval": ([py, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                     f"pretrained={model},dtype=bfloat16", "--tasks", "bench_mc",
                     "--include_path", str(suite_dir / "tasks"), "--batch_size", "64",
                     "--device", "cuda:0", "--output_path", str(work / "lm_eval_out")],
                    suite_dir),
        "plugin-1": ([py, "-m", "pytest", "-p", "no:cacheprovider", str(suite), "--gpus", "1",
                      "--disteval-no-cache", f"--disteval-dir={work / 'd1'}"], suite_dir),
    }
    for n in [int(x) for x in args.packs.split(",") if x]:
        runs[f"plugin-{n}x"] = ([py, "-m", "pytest", "-p", "no:cacheprovider", str(suite),
                                 "--gpus", "1", "--disteval-no-cache", "--disteval-pack",
                                 str(n), f"--disteval-dir={work / f'd{n}'}"], suite_dir)
    for variant in args.variant:
        name, _, extra = variant.partition("=")
        runs[name] = ([py, "-m", "pytest", "-p", "no:cacheprovider", str(suite),
                       "--disteval-no-cache", f"--disteval-dir={work / name}", *extra.split()],
                      suite_dir)
    if args.no_lm_eval:
        del runs["lm_eval"]
    import pynvml

    pynvml.nvmlInit()
    baseline = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
    rows: list[dict[str, object]] = []
    names = list(runs)
    for r in range(args.first_round, args.first_round + args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            command, cwd = runs[name]
            with Sampler(index=None) as sampler:
                row = timed(command, cwd, env, work / f"{name}-{r}.log")
            row.update(sampler.summary(baseline))
            row.update({"run": name, "round": r})
            rows.append(row)
            print(f"round {r} {name:10s} wall {row['wall_s']:7.1f}s  util "
                  f"{row['mean_util_pct']:5.1f}%  peak {row['peak_mem_gib']:5.1f} GiB", flush=True)
    requests = 4 * args.docs
    table = []
    reference = "lm_eval" if "lm_eval" in runs else names[0]
    base = statistics.median(float(x["wall_s"]) for x in rows if x["run"] == reference)
    for name in names:
        mine = [x for x in rows if x["run"] == name]
        wall = statistics.median(float(x["wall_s"]) for x in mine)
        table.append({"run": name, "median_wall_s": wall, "requests_per_s": requests / wall,
                      "mean_util": statistics.fmean(float(x["mean_util_pct"]) for x in mine),
                      "peak_mem_gib": max(float(x["peak_mem_gib"]) for x in mine),
                      "vs_lm_eval": wall / base, "throughput_vs_lm_eval": base / wall})
    scores = {}
    for name in names:
        if name == "lm_eval":
            found = sorted((work / "lm_eval_out").rglob("results_*.json"))
        elif name.startswith("plugin-"):
            found = sorted(work.glob(f"d{name.split('-')[1].rstrip('x')}/results/**/*.json"))
        else:
            found = sorted(work.glob(f"{name}/results/**/*.json"))
        if found:
            data = json.loads(found[-1].read_text())
            scores[name] = data["results"]["bench_mc"].get("acc,none")
    print(f"\n{'run':<12}{'wall s':>9}{'req/s':>9}{'util %':>8}{'peak GiB':>10}"
          f"{'wall/' + reference:>14}{'throughput x':>14}")
    for t in table:
        print(f"{t['run']:<12}{t['median_wall_s']:>9.1f}{t['requests_per_s']:>9.1f}"
              f"{t['mean_util']:>8.1f}{t['peak_mem_gib']:>10.1f}{t['vs_lm_eval']:>14.3f}"
              f"{t['throughput_vs_lm_eval']:>14.2f}")
    print("acc per run (bf16; packing changes batch composition):", scores)
    gpu = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    result = {"gpu": gpu if isinstance(gpu, str) else gpu.decode(), "rows": rows,
              "table": table, "scores": scores, "date": time.strftime("%Y-%m-%d")}
    lines = worker_lines(sorted(work.glob("*/logs/*.log")))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        tag = f"{args.docs}-r{args.first_round}"
        (args.out / f"gpu_dp-{tag}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"workers-{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
