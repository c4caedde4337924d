"""What per-document results cost: simple_evaluate with and without log_samples.

The worker calls ``simple_evaluate(..., log_samples=True)`` so regression items can
run paired tests (docs/baselines.md). This times the smoke tasks on one loaded
model, rounds interleaved (off, on, off, on, ...) so drift in the machine's load
hits both alike, and reports the median wall and CPU seconds of each, and the
size of the compact samples file the worker would store.

    .venv/bin/python benchmarks/log_samples.py --rounds 5 --json /tmp/log-samples.json

Run from the repository root. Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import REPO, machine_info  # noqa: E402

TASKS = ["arith_mc", "arith_gen"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=str(REPO / "demo" / "models" / "tiny-arith"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    os.chdir(REPO / "suites")  # the tasks' data_files are relative to it
    info = machine_info()

    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from pytest_disteval.store.samples import entry_samples, samples_path, write_samples

    manager = TaskManager(include_path=[str(REPO / "suites" / "tasks")], include_defaults=False)
    lm = get_model("hf").create_from_arg_obj({"pretrained": args.model, "dtype": "float32"},
                                             {"batch_size": 64, "device": "cpu"})
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        for log in (False, True):
            wall, cpu = time.perf_counter(), time.process_time()
            results = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=manager,
                                              log_samples=log, verbosity="ERROR")
            times[log].append((time.perf_counter() - wall, time.process_time() - cpu))
            if log and not sizes and results is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    for task in TASKS:
                        entry = Path(tmp) / f"{task}.json"
                        write_samples(entry, task, entry_samples(results["samples"], [task]))
                        sizes[task] = samples_path(entry).stat().st_size
    report = {"machine": info, "loadavg_end": list(os.getloadavg()), "rounds": args.rounds,
              "tasks": TASKS, "samples_file_bytes": sizes}
    for log in (False, True):
        walls = [w for w, _ in times[log]]
        cpus = [c for _, c in times[log]]
        report[f"log_samples={log}"] = {"median_wall_s": round(statistics.median(walls), 3),
                                        "median_cpu_s": round(statistics.median(cpus), 3),
                                        "wall_s": [round(w, 3) for w in walls]}
    print(f"load average at start {info['loadavg_start']}, at end {report['loadavg_end']}")
    for log in (False, True):
        row = report[f"log_samples={log}"]
        print(f"log_samples={log!s:5}  median wall {row['median_wall_s']:.2f} s  "
              f"median CPU {row['median_cpu_s']:.2f} s  (rounds: {row['wall_s']})")
    print(f"compact samples per entry (200 documents): {sizes}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
