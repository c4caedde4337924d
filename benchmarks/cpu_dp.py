"""CPU data parallelism: the smoke suite's job with dp = 1 vs dp = 2 (two processes).

    python benchmarks/cpu_dp.py --rounds 3 [--json out.json]

Whole `pytest suites/smoke.yaml --gpus 0 --dp N --disteval-no-cache` processes,
alternating, timed; the scores of both must be equal (request sharding is exact).
On the tiny demo model most of a job is process start-up (imports, model load):
dp = 2 pays it twice and adds a scoring process, so this measures the overhead of
sharding more than its gain; the gain shows on jobs whose requests dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(dp: int, base: Path) -> float:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
               str(ROOT / "suites" / "smoke.yaml"), "--gpus", "0", "--dp", str(dp),
               "--disteval-no-cache", f"--disteval-dir={base}"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"dp={dp} failed:\n{proc.stdout[-3000:]}")
    return wall


def scores(base: Path) -> dict[str, object]:
    data = json.loads(next((base / "results").rglob("tiny-arith.json")).read_text())
    return data["results"]  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    walls: dict[int, list[float]] = {1: [], 2: []}
    found: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for dp in ((1, 2) if r % 2 == 0 else (2, 1)):
                base = Path(tmp) / f"dp{dp}-{r}"
                walls[dp].append(run(dp, base))
                found[dp] = scores(base)
                print(f"round {r} dp={dp}: {walls[dp][-1]:.1f}s", flush=True)
    if found[1] != found[2]:
        sys.exit("scores differ between dp=1 and dp=2")
    med = {dp: statistics.median(w) for dp, w in walls.items()}
    print(f"median dp=1 {med[1]:.1f}s, dp=2 {med[2]:.1f}s, ratio dp2/dp1 {med[2] / med[1]:.2f}; "
          f"scores equal: {found[1] == found[2]}; cores: {os.cpu_count()}")
    if args.json:
        args.json.write_text(json.dumps({"walls": walls, "median": med,
                                         "ratio": med[2] / med[1]}, indent=1))


if __name__ == "__main__":
    main()
