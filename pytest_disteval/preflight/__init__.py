"""Preflight checks: what is wrong with this machine, before a model spends minutes loading.

Each check is data (name, status, detail, fix). ``pytest --disteval-doctor`` prints
them all and exits; a run that uses GPUs (real or fake) runs them at its start,
and a FAIL stops the session before any worker starts (exit code EXIT_PREFLIGHT).
Runs on the CPU skip them: there is nothing to load on a GPU.

Nothing heavy is imported here: backends are found with ``find_spec`` and package
metadata, NVML through the pynvml interface (a fake stands in for tests), and
NCCL is read from torch in a subprocess with a timeout.

Modules: ``check`` (the record), ``doctor`` (the runner), ``gpu`` (GPUs, driver,
NCCL, interconnect, packing), ``software`` (lm-eval and backends), ``disk`` (space,
offline mode, models, datasets), ``chat`` (chat templates against the tokenizer files),
``render`` (the lines printed).
"""

from pytest_disteval.preflight.check import EXIT_PREFLIGHT, FAIL, PASS, WARN, Check
from pytest_disteval.preflight.doctor import Doctor
from pytest_disteval.preflight.gpu import probe_torch
from pytest_disteval.preflight.render import counts, failure_message, render

__all__ = ["EXIT_PREFLIGHT", "FAIL", "PASS", "WARN", "Check", "Doctor", "counts",
           "failure_message", "probe_torch", "render"]
