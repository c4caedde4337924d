"""Where a worker's model load goes: the stages of lm-eval's HF model start, timed apart.

    python benchmarks/profile_load.py --model /tmp/llama-1.1b [--device cuda] [--parallel 4]

The plugin's workers reported ``model loaded in 14-16 s`` for the random 1.1B Llama
on an H200 (docs/benchmarks.md, section 7), against 2.5 s on a CPU: the load is
most of a packed replica's critical path. Each stage runs in a fresh process
(imports are the first thing a worker pays), one after the other:

  stages      import torch, CUDA init, import transformers' Llama, the tokenizer,
              from_pretrained onto the device (and a second time, warm), the raw
              safetensors read onto the device, and lm-eval's HFLM as the worker
              builds it
  profile     cProfile of the HFLM construction (after its imports), top functions
  parallel    ``--parallel N`` fresh processes building HFLM at once, as packed
              replicas do (their stage times side by side)

Prints one JSON line per process and a summary; ``--out`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = r"""
import json, sys, time
t = [time.perf_counter()]
marks = {}
def mark(name):
    now = time.perf_counter(); marks[name] = round(now - t[0], 3); t[0] = now
model, device, what = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
mark("import_torch")
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
if device.startswith("cuda"):
    torch.cuda.init(); torch.zeros(1, device=device); sync()
mark("cuda_init")
if what == "stages":
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama import modeling_llama  # noqa: F401
    mark("import_transformers")
    AutoTokenizer.from_pretrained(model)
    mark("tokenizer")
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16,
                                             device_map={"": device}); sync()
    mark("from_pretrained")
    del m; torch.cuda.empty_cache() if device.startswith("cuda") else None
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16,
                                             device_map={"": device}); sync()
    mark("from_pretrained_again")
    del m
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16); m.to(device); sync()
    mark("from_pretrained_cpu_then_to")
    del m
    from safetensors.torch import load_file
    load_file(f"{model}/model.safetensors", device=device); sync()
    mark("safetensors_load_file")
else:  # hflm: as the worker does it
    import lm_eval.api.registry
    cls = lm_eval.api.registry.get_model("hf")
    mark("import_lm_eval_hf")
    args = {"pretrained": model, "dtype": "bfloat16"}
    extra = {"batch_size": 64, "max_batch_size": None, "device": device}
    if what == "profile":
        import cProfile, io, pstats
        prof = cProfile.Profile(); prof.enable()
        cls.create_from_arg_obj(args, extra); sync()
        prof.disable(); mark("hflm")
        for key in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(25)
            print(buf.getvalue(), file=sys.stderr)
    else:
        cls.create_from_arg_obj(args, extra); sync()
        mark("hflm")
marks["total"] = round(sum(marks.values()), 3)
print(json.dumps({"what": what, **marks}), flush=True)
"""


def launch(model: str, device: str, what: str, log: Path | None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    err = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-c", STAGES, model, device, what],
                            stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    out = a.out or Path("/tmp/profile-load")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for what in ("stages", "hflm", "profile"):
        start = time.perf_counter()
        row = result(launch(a.model, a.device, what, out / f"{what}.log"))
        row["wall"] = round(time.perf_counter() - start, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    # side by side as packed replicas, with torch's default threads (all cores each)
    # and with the cores shared out: oversubscription is one suspect
    threads = str(max(1, (os.cpu_count() or 1) // a.parallel))
    for label, env in (("default threads", {}), (f"{threads} threads each",
                                                  {"OMP_NUM_THREADS": threads})):
        start = time.perf_counter()
        procs = [launch(a.model, a.device, "hflm", out / f"parallel-{i}.log", env)
                 for i in range(a.parallel)]
        side = [result(p) for p in procs]
        wall = round(time.perf_counter() - start, 2)
        for row in side:
            row["what"] = f"hflm x{a.parallel}, {label}"
            print(json.dumps(row), flush=True)
            rows.append(row)
        rows.append({"what": f"parallel x{a.parallel}, {label}", "wall": wall})
        print(f"{a.parallel} side by side, {label}: {wall} s wall", flush=True)
    (out / "profile-load.json").write_text(json.dumps(rows, indent=1))
    print((out / "profile.log").read_text()[:12000])


if __name__ == "__main__":
    main()
