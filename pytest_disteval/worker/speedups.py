"""Two costs lm-eval 0.4.13 pays on every call that change no result; the worker removes them.

- ``lm_eval.utils.apply_template`` compiles its Jinja template again for every
  document and field (``env.from_string`` has no cache): for a 1,000-document
  multiple-choice task that is 4,000 compilations, most of the time lm-eval
  spends building requests. Compiled templates are kept per template string;
  the same Template renders the same text, so contexts, requests and scores are
  unchanged (tests/integration/test_lm_eval_equality.py compares with a plain lm-eval run).
- ``simple_evaluate`` ends with ``add_env_info``, which runs torch's
  ``collect_env`` (a dozen subprocesses: nvidia-smi, pip, ...) every call. The
  environment does not change within a worker: it is collected once, in a
  thread started once the model is loaded (``start_env_probe``: the
  subprocesses' waits overlap with building requests), and copied into every
  result; a shard, whose results are discarded, skips it.

Applied in the worker process only, after lm-eval is imported; never in pytest's.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_env: dict[str, Any] = {}
_probe: threading.Thread | None = None


def apply(*, collect_env: bool = True) -> list[str]:
    """Patch what this lm-eval has; returns the names of the speed-ups applied."""
    import lm_eval.evaluator
    import lm_eval.utils

    applied = []
    env = getattr(lm_eval.utils, "env", None)
    original = getattr(lm_eval.utils, "apply_template", None)
    if env is not None and callable(getattr(env, "from_string", None)) and original:
        compiled = functools.lru_cache(maxsize=4096)(env.from_string)

        def apply_template(template: str, doc: dict[str, Any]) -> str:
            return str(compiled(template).render(**doc))

        apply_template.__wrapped__ = original  # type: ignore[attr-defined]
        lm_eval.utils.apply_template = apply_template
        applied.append("template cache")
    add_env_info = getattr(lm_eval.evaluator, "add_env_info", None)
    if callable(add_env_info):
        def add_env_info_once(storage: dict[str, Any]) -> None:
            if not collect_env:
                return
            if _probe is not None:
                _probe.join()
            if not _env:
                add_env_info(_env)
            storage.update(copy.deepcopy(_env))

        add_env_info_once.__wrapped__ = add_env_info  # type: ignore[attr-defined]
        lm_eval.evaluator.add_env_info = add_env_info_once
        applied.append("environment collected once" if collect_env else "no environment")
    return applied


def start_env_probe() -> None:
    """Collect the environment in the background (after torch is imported: no import race)."""
    global _probe
    import lm_eval.evaluator

    original = getattr(lm_eval.evaluator.add_env_info, "__wrapped__", None)
    if original is None or _probe is not None:
        return
    _probe = threading.Thread(target=original, args=(_env,), name="disteval-env-probe",
                              daemon=True)
    _probe.start()
