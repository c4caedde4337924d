"""Cross-process GPU leases: file locks with owner records, stale locks of dead owners reclaimed."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pytest_disteval.gpu.inventory import GPU, VISIBLE_VAR, _indices

LOCK_DIR_VAR = "PYTEST_DISTEVAL_LOCK_DIR"


class LeaseError(RuntimeError):
    """A lease cannot be granted as asked (for example, the same thread asks twice)."""


class LeaseTimeout(LeaseError, TimeoutError):
    """No lease within the timeout; the message names who holds the GPUs."""


# GPUs leased by this process (uuid -> thread ident): flock alone would refuse a second
# lease too, but this also covers the moment between the check and the flock, and tells
# "held by this process" apart in messages.
_held: dict[str, int] = {}


_held_lock = threading.Lock()


def _forget_leases_in_child() -> None:
    # a forked child shares its parent's locks but does not own them
    global _held_lock
    _held_lock = threading.Lock()
    _held.clear()



if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_leases_in_child)


def default_lock_dir() -> Path:
    """$PYTEST_DISTEVAL_LOCK_DIR, else /tmp/pytest-disteval-locks (one per host, all users)."""
    configured = os.environ.get(LOCK_DIR_VAR)
    if configured:
        return Path(configured)
    # not $TMPDIR: schedulers set it per job, and every session on the host must meet here
    base = "/tmp" if os.name == "posix" else tempfile.gettempdir()
    return Path(base) / "pytest-disteval-locks"


class Lease:
    """GPUs held by this process until release() (or the process's death)."""

    def __init__(self, gpus: Sequence[GPU], fds: Mapping[str, int], owner: str) -> None:
        self.gpus: list[GPU] = sorted(gpus, key=lambda g: g.index)
        self.owner = owner
        self._fds = dict(fds)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(g.index) for g in self.gpus)

    @property
    def released(self) -> bool:
        return not self._fds

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with CUDA_VISIBLE_DEVICES set to this lease's GPUs."""
        env = dict(os.environ if base is None else base)
        env[VISIBLE_VAR] = self.cuda_visible_devices
        # the indices are NVML's, which CUDA uses only in PCI bus order
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def release(self) -> None:
        """Give the GPUs back; releasing twice is harmless."""
        with _held_lock:
            fds, self._fds = self._fds, {}
            for uuid in fds:
                _held.pop(uuid, None)
        for fd in fds.values():
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Lease GPUs {self.cuda_visible_devices} {state}>"


class LeaseManager:
    """Leases on GPUs shared by every process on this host that uses the same lock_dir.

    One lock file per GPU UUID, held with flock(2): the kernel drops the lock when its
    holder exits, however it dies, so a dead owner's GPUs are free again with no cleanup
    and no guessing from PIDs. The lock file also holds the owner record (JSON: pid,
    host, owner, since), so the record cannot drift from the lock it describes.
    """

    def __init__(self, lock_dir: Path | str | None = None, *, poll_interval: float = 0.05) -> None:
        shared = lock_dir is None
        self.lock_dir = default_lock_dir() if lock_dir is None else Path(lock_dir)
        self.poll_interval = poll_interval
        self._shared = shared
        if not self.lock_dir.is_dir():
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            if shared:
                try:
                    # sticky and world-writable, like /tmp: other users' sessions lease here too
                    os.chmod(self.lock_dir, 0o1777)
                except OSError:
                    pass  # created by someone else in the meantime

    def lock_path(self, gpu: GPU) -> Path:
        return self.lock_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", gpu.uuid) + ".lock")

    def try_acquire(self, gpus: Sequence[GPU], *, owner: str = "") -> Lease | None:
        """All of `gpus` leased now, or None (nothing held) if any is taken."""
        chosen = self._validate(gpus)
        me = threading.get_ident()
        with _held_lock:
            if any(g.uuid in _held for g in chosen):
                return None
            for gpu in chosen:
                _held[gpu.uuid] = me  # reserve against other threads until the flocks are taken
        fds: dict[str, int] = {}
        try:
            for gpu in chosen:  # sorted by UUID: one global order for every process
                fd = self._open(gpu)
                if not _flock(fd, exclusive=True):
                    os.close(fd)
                    break
                fds[gpu.uuid] = fd
            else:
                record = self._record(chosen, owner)
                for gpu in chosen:
                    _write_record(fds[gpu.uuid], {**record, "gpu": gpu.index, "uuid": gpu.uuid})
                return Lease(chosen, fds, record["owner"])
        except BaseException:
            self._undo(chosen, fds)
            raise
        self._undo(chosen, fds)  # all or nothing
        return None

    def acquire(
        self, gpus: Sequence[GPU], *, timeout: float | None = None, owner: str = ""
    ) -> Lease:
        """All of `gpus`, waiting up to `timeout` seconds (None: forever)."""
        return self.acquire_any([list(gpus)], timeout=timeout, owner=owner)

    def acquire_any(
        self,
        candidate_groups: Sequence[Sequence[GPU]],
        timeout: float | None = None,
        *,
        owner: str = "",
    ) -> Lease:
        """The first candidate group that is free, polling until `timeout` (None: forever)."""
        if not candidate_groups:
            raise ValueError("no candidate groups to lease")
        me = threading.get_ident()
        with _held_lock:
            mine = [any(_held.get(g.uuid) == me for g in group) for group in candidate_groups]
        if all(mine):
            # waiting would never end: only this thread could release them
            raise LeaseError(
                f"{self._busy(candidate_groups)}; this thread already leases them, release first"
            )
        groups = [group for group, own in zip(candidate_groups, mine, strict=True) if not own]
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.poll_interval
        while True:
            for group in groups:
                lease = self.try_acquire(group, owner=owner)
                if lease is not None:
                    return lease
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise LeaseTimeout(f"no GPUs leased within {timeout:g} s: {self._busy(groups)}")
            # jitter, so that processes polling the same GPUs fall out of step
            pause = delay * random.uniform(0.5, 1.5)
            time.sleep(pause if left is None else min(pause, left))
            delay = min(delay * 1.5, max(self.poll_interval, min(0.5, 20 * self.poll_interval)))

    def holder(self, gpu: GPU) -> dict[str, Any] | None:
        """The owner record of `gpu` if someone holds it now, else None.

        The probe takes a shared flock for an instant, so a concurrent try_acquire may
        find the GPU busy then; acquire() simply polls again.
        """
        try:
            fd = os.open(self.lock_path(gpu), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        try:
            if _flock(fd, exclusive=False):
                return None  # nobody holds it: a record left there is a past owner's
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
        finally:
            os.close(fd)
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return {"gpu": gpu.index, "uuid": gpu.uuid, "pid": None, "note": "no owner record"}
        return record

    def describe_holder(self, gpu: GPU) -> str:
        """'GPU 3 is held by pid 1234 on node7 (pytest -k foo) since 2025-01-01T10:00:00'."""
        with _held_lock:
            thread = _held.get(gpu.uuid)
        if thread is not None:
            return f"GPU {gpu.index} is held by this process (pid {os.getpid()}, thread {thread})"
        record = self.holder(gpu)
        if record is None:
            return f"GPU {gpu.index} is free"
        if record.get("pid") is None:
            return f"GPU {gpu.index} is held (owner unknown: {self.lock_path(gpu)})"
        return (
            f"GPU {gpu.index} is held by pid {record['pid']} on {record.get('host', '?')} "
            f"({record.get('owner', '')}) since {record.get('since', '?')}"
        )

    def _busy(self, groups: Sequence[Sequence[GPU]]) -> str:
        seen: dict[str, GPU] = {g.uuid: g for group in groups for g in group}
        described = [self.describe_holder(g) for g in sorted(seen.values(), key=lambda g: g.index)]
        busy = [text for text in described if not text.endswith(" is free")]
        return "; ".join(busy or described)

    def _validate(self, gpus: Sequence[GPU]) -> list[GPU]:
        if not gpus:
            raise ValueError("a lease needs at least one GPU")
        if len({g.uuid for g in gpus}) != len(gpus):
            raise ValueError(f"GPUs listed twice in one lease: {_indices(gpus)}")
        return sorted(gpus, key=lambda g: g.uuid)

    def _open(self, gpu: GPU) -> int:
        path = self.lock_path(gpu)
        # O_NOFOLLOW: in a shared directory a planted symlink must not redirect our writes
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except PermissionError:
            # another user's file that is not writable: we can still lock it, not annotate it
            return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        if self._shared:
            try:
                os.fchmod(fd, 0o666)  # past our umask, so other users can write records
            except OSError:
                pass  # not our file
        return fd

    def _record(self, gpus: Sequence[GPU], owner: str) -> dict[str, Any]:
        text = owner or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        now = time.time()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "owner": text,
            "since": datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
            "time": now,
            "gpus": sorted(g.index for g in gpus),
        }

    def _undo(self, chosen: Sequence[GPU], fds: Mapping[str, int]) -> None:
        for fd in fds.values():
            os.close(fd)
        with _held_lock:
            for gpu in chosen:
                _held.pop(gpu.uuid, None)


def _flock(fd: int, *, exclusive: bool) -> bool:
    """Take a flock without waiting; False if another open file holds a conflicting one."""
    import fcntl  # POSIX only; imported here so the module imports on any platform

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _write_record(fd: int, record: Mapping[str, Any]) -> None:
    data = json.dumps(record).encode()
    try:
        # write, then cut the tail: a reader sees old or new text, never an empty file
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    except OSError:
        pass  # a read-only lock file (see _open): the lease holds, only unannotated
