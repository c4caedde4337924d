"""The worker's side of live progress: requests done and known, in a small file.

The real model is left as it is. Its request methods are wrapped on the instance
(to learn how many requests each call brings) and its ``cache_hook``, which
lm-eval's models call once per answered request, counts the answers. The file
is rewritten at most every ``period`` seconds and at the end of every call, so
it costs a few writes a second whatever the request rate. The pytest process
polls these files (progress.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")
PERIOD_S = 0.5


class ProgressCounter:
    def __init__(self, path: Path, period: float = PERIOD_S) -> None:
        self.path = path
        self.period = period
        self.done = 0
        self.total = 0
        self.started = time.time()
        self._written = 0.0

    def answered(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._written >= self.period:
            self.write()

    def write(self) -> None:
        self._written = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"done": min(self.done, self.total), "total": self.total,
                                       "started": self.started, "time": time.time()}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress is a courtesy: it never fails a run


class _CountingHook:
    """Stands in for the model's CacheHook: counts, then passes the answer on."""

    def __init__(self, inner: Any, counter: ProgressCounter) -> None:
        self.inner = inner
        self.counter = counter

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        self.counter.answered()
        if self.inner is not None:
            self.inner.add_partial(attr, req, res)


def install(lm: Any, path: Path) -> ProgressCounter:
    """Count ``lm``'s requests into ``path``; returns the counter."""
    counter = ProgressCounter(path)
    lm.cache_hook = _CountingHook(getattr(lm, "cache_hook", None), counter)
    for kind in KINDS:
        method = getattr(lm, kind, None)
        if method is None:
            continue

        def counted(requests: list[Any], *args: Any, _method: Any = method,
                    **kwargs: Any) -> Any:
            counter.total += len(requests)
            at_start = counter.done
            counter.write()
            try:
                return _method(requests, *args, **kwargs)
            finally:
                # exact at the end of every call, whether or not the model called the hook
                counter.done = max(counter.done, at_start + len(requests))
                counter.write()

        setattr(lm, kind, counted)
    counter.write()
    return counter
