"""Live progress while a suite item waits for its job: one status drawn after pytest's text.

``[disteval] jobs 1/3 · 2 workers · requests 120/400 · ETA 12s`` is drawn at the
end of pytest's current line (after ``suites/x.yaml ..`` or the ``-v`` node id),
redrawn in place every half second, and erased before pytest writes again, so
pytest's own output is left exactly as it would be. It is drawn only on a TTY
(``--disteval-progress auto``), and never by xdist workers (their stdout is
not one).

The status goes to a duplicate of the terminal's file descriptor taken at
configure time: while a test runs, pytest captures fd 1, and the item waiting
for its job is a test that runs. The terminal writer still says how wide the
screen is and how much of the line pytest has used.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

SAVE, RESTORE, ERASE = "\x1b7", "\x1b8", "\x1b[K"


def enabled(mode: str, fd: int, verbosity: int, xdist_worker: bool) -> bool:
    if mode == "off" or xdist_worker:
        return False
    if mode == "on":
        return True
    return os.isatty(fd) and verbosity > -2  # -qq: as quiet as pytest itself


def read_counts(runs_dir: Path, since: float) -> tuple[int, int, int, int, float | None]:
    """(workers running, of them shards, requests done, known, first start) of this session."""
    running = shards = done = total = 0
    first: float | None = None
    for path in runs_dir.glob("*/progress-*.json"):
        try:
            if path.stat().st_mtime < since:
                continue  # an earlier session's
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now: the next poll reads it
        done += int(data.get("done", 0))
        total += int(data.get("total", 0))
        if data.get("done", 0) < data.get("total", 0) or not data.get("total"):
            running += 1
            # a dp job's run directory holds its shards' specs: its workers are shards
            shards += (path.parent / "spec-shard0.json").exists()
        started = data.get("started")
        if isinstance(started, int | float) and started >= since:
            first = started if first is None else min(first, started)
    return running, shards, done, total, first


def status(jobs_done: int, jobs: int, running: int, done: int, total: int,
           first: float | None, now: float, shards: int = 0) -> str:
    parts = [f"jobs {jobs_done}/{jobs}"]
    if shards:
        parts.append(f"{shards} shard{'s' if shards != 1 else ''}")
    if running - shards:
        parts.append(f"{running - shards} worker{'s' if running - shards != 1 else ''}")
    if total:
        parts.append(f"requests {done}/{total}")
        # a few answers say little about the rate: no ETA before 5% are done
        if first is not None and total / 20 <= done < total and done and now > first:
            eta = (total - done) * (now - first) / done
            parts.append(f"ETA {eta:.0f}s" if eta < 120 else f"ETA {eta / 60:.0f}m")
    elif jobs_done < jobs:
        parts.append("loading")
    return "[disteval] " + " · ".join(parts)


class ProgressLine:
    """Draws the status in a thread while one item waits; ``stop`` erases it."""

    def __init__(self, fd: int, writer: Any, scheduler: Any, runs_dir: Path,
                 since: float, period: float = 0.5) -> None:
        self.fd = fd
        self.writer = writer
        self.scheduler = scheduler
        self.runs_dir = runs_dir
        self.since = since
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="disteval-progress",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._drawn:
            self._write(RESTORE + ERASE)
            self._drawn = False

    def _loop(self) -> None:
        # the first draw waits one period: a job answered from the store shows nothing
        while not self._stop.wait(self.period):
            self._draw()

    def _draw(self) -> None:
        jobs = len(self.scheduler.jobs)
        jobs_done = sum(1 for o in self.scheduler.outcomes.values() if o is not None)
        running, shards, done, total, first = read_counts(self.runs_dir, self.since)
        text = " " + status(jobs_done, jobs, running, done, total, first, time.time(), shards)
        room = self.writer.fullwidth - self.writer.width_of_current_line - 1
        if room < 12:
            return  # no room left on pytest's line: draw nothing rather than wrap
        text = text[:room]
        self._write((RESTORE + ERASE if self._drawn else SAVE) + text)
        self._drawn = True

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:
            pass
