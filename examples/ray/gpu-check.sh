#!/bin/bash
# The Ray executor on a real GPU host (one H200 is enough): a one-node Ray cluster
# whose GPU is real, the demo model on cuda through a Ray actor, compared with the
# local executor's scores. Writes everything under ${OUT:-/tmp/disteval-ray-check}.
#   usage: bash examples/ray/gpu-check.sh        (from the repository root)
# Needs: the dev environment of this repository with ray installed (docs/multi-node.md,
# "A run on a GPU machine", says how to carry the wheel there).
set -uo pipefail  # no -e: a failing run still gets compared and reported

OUT=${OUT:-/tmp/disteval-ray-check}
PY=${PY:-python}
PORT=${RAY_PORT:-6391}
mkdir -p "$OUT/suites"
cp -r suites/tasks suites/data "$OUT/suites/"
cat > "$OUT/suites/gpu.yaml" <<YAML
disteval: 1
include: [tasks]
models:
  - name: tiny-arith
    backend: hf
    model_args: {pretrained: $PWD/demo/models/tiny-arith, dtype: float32}
    device: cuda
    batch_size: 64
tasks:
  - task: arith_mc
    num_fewshot: 3
    thresholds: {acc: 0.9}
  - task: arith_gen
    thresholds:
      exact_match,strict-match: 0.9
YAML

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the head in its own session: killing its process group stops exactly this cluster
setsid "$PY" -m ray.scripts.scripts start --head --block --port="$PORT" \
    --include-dashboard=false --disable-usage-stats > "$OUT/ray-head.log" 2>&1 &
head=$!
trap 'kill -TERM -- -$head 2>/dev/null; sleep 5; kill -KILL -- -$head 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    grep -q "Ray runtime started" "$OUT/ray-head.log" && break
    sleep 1
done
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"

cd "$OUT"
"$PY" -m pytest -p no:cacheprovider suites --disteval-executor ray \
    --ray-address "127.0.0.1:$PORT" --disteval-plan | tee plan.txt
time "$PY" -m pytest -p no:cacheprovider suites --disteval-executor ray \
    --ray-address "127.0.0.1:$PORT" --disteval-dir="$OUT/ray" \
    --junitxml="$OUT/ray.xml" 2>&1 | tee ray.txt
time "$PY" -m pytest -p no:cacheprovider suites \
    --disteval-dir="$OUT/local" --junitxml="$OUT/local.xml" 2>&1 | tee local.txt
"$PY" - "$OUT" <<'PYCHECK'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ray = json.loads((out / "ray/results/suites/gpu/tiny-arith.json").read_text())["results"]
local = json.loads((out / "local/results/suites/gpu/tiny-arith.json").read_text())["results"]
print("scores equal:", ray == local)
for line in (out / "ray/workers.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["event"] == "actor":
        print("actor", record["actor"], "gpu_ids", record["gpu_ids"],
              "CUDA_VISIBLE_DEVICES", record["cuda_visible_devices"])
for path in sorted(out.glob("ray/runs/*/shard-*.json")):
    record = json.loads(path.read_text())
    print(path.name, "worker saw CUDA_VISIBLE_DEVICES", record["cuda_visible_devices"],
          "executed", record["requests_executed"], "load_s", round(record["load_s"], 1))
sys.exit(0 if ray == local else 1)
PYCHECK
