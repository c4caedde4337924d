"""Software checks: lm-eval, and the backend of every job, found without importing them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from pytest_disteval.backends import BACKENDS
from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check


def backends(jobs: Iterable[EvalJob]) -> list[Check]:
    """lm-eval, then each backend the jobs use: FAIL if missing and a model requires it."""
    checks = []
    version = package_version("lm_eval")
    if importlib.util.find_spec("lm_eval") is None:
        checks.append(Check("backend lm-eval", FAIL, "lm_eval is not importable",
                            "pip install 'lm-eval>=0.4.13,<0.5'"))
    else:
        checks.append(Check("backend lm-eval", PASS, f"lm-eval {version}"))
    required: dict[str, bool] = {}
    for job in jobs:
        required[job.model.backend] = (required.get(job.model.backend, False)
                                       or job.model.required)
    for name in sorted(required):
        backend = BACKENDS[name]
        versions = ", ".join(f"{d} {package_version(d)}" for d in backend.distributions
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
