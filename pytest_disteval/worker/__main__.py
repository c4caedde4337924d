"""``python -m pytest_disteval.worker SPEC.json``."""

import os
import sys

from pytest_disteval.worker.main import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    # everything is written and flushed; skipping interpreter teardown after torch
    # saves 1.5-2 s per worker (measured by benchmarks/smoke_vs_lm_eval.py)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
