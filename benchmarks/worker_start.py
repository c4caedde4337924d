"""Forked workers vs subprocess workers on the CPU: whole pytest sessions, alternating.

    python benchmarks/worker_start.py [--models 4] [--rounds 3]

A suite of ``--models`` copies of the demo model (distinct paths: distinct jobs,
nothing shared through the store), two tasks each, run cold
(``--disteval-no-cache``) as one pytest session with ``--disteval-worker-start
forkserver`` and with ``subprocess``; then the same suite with ``--dp 2``
(two shards and a scoring worker per job). Each session is a whole process,
timed from start to exit. Prints the median wall times and the ratio
forkserver / subprocess (lower is better) measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_suite(work: Path, models: int) -> Path:
    suites = work / "suites"
    shutil.copytree(ROOT / "suites" / "tasks", suites / "tasks")
    shutil.copytree(ROOT / "suites" / "data", suites / "data")
    blocks = []
    for i in range(models):
        path = work / f"model-{i}"
        shutil.copytree(ROOT / "demo" / "models" / "tiny-arith", path)
        blocks.append(f"  - name: m{i}\n    backend: hf\n"
                      f"    model_args: {{pretrained: {path}, dtype: float32}}\n"
                      "    device: cpu\n    batch_size: 64\n")
    (suites / "many.yaml").write_text(
        "disteval: 1\ninclude: [tasks]\nmodels:\n" + "".join(blocks)
        + "tasks:\n  - task: arith_mc\n    num_fewshot: 3\n    limit: 40\n"
        "    thresholds: {acc: 0.5}\n  - task: arith_gen\n    limit: 20\n"
        "    thresholds:\n      exact_match,strict-match: 0.5\n")
    return suites


def session(suites: Path, start: str, extra: list[str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(suites), "--disteval-no-cache",
                           f"--disteval-dir={suites.parent / ('d-' + start)}",
                           f"--disteval-worker-start={start}", *extra],
                          cwd=suites.parent, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{start} {extra} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="disteval-start-") as tmp:
        suites = make_suite(Path(tmp), args.models)
        variants = {"dp1": [], "dp2": ["--gpus", "0", "--dp", "2"]}
        walls: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for name, extra in variants.items():
                order = ["forkserver", "subprocess"]
                for start in (order if r % 2 == 0 else order[::-1]):
                    wall = session(suites, start, extra)
                    walls.setdefault((name, start), []).append(wall)
                    print(f"round {r} {name} {start:10s} {wall:6.1f} s", flush=True)
    print(f"\n{args.models} models x 2 tasks, cold, median of {args.rounds} rounds")
    print("variant  forkserver  subprocess  ratio")
    for name in variants:
        fork = statistics.median(walls[(name, "forkserver")])
        sub = statistics.median(walls[(name, "subprocess")])
        print(f"{name:7s}  {fork:8.1f} s  {sub:8.1f} s  {fork / sub:5.2f}")


if __name__ == "__main__":
    main()
