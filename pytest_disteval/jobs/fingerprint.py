"""Content fingerprints for cache keys: model files, task files, data files.

Hashing is done in the pytest process at run time (never at collection) and
never imports lm-eval or torch: versions come from package metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

# files above this size are fingerprinted by size, mtime and their first and last
# MiB: hashing a 140 GB checkpoint on every run would cost minutes
FULL_HASH_LIMIT = 256 * 1024 * 1024
_EDGE = 1024 * 1024


def file_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=65536)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    # memoised on (path, size, mtime): shared data files are hashed once per session
    h = hashlib.sha256()
    if size <= FULL_HASH_LIMIT:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    h.update(f"{size}:{mtime_ns}".encode())
    with path.open("rb") as handle:
        h.update(handle.read(_EDGE))
        handle.seek(-_EDGE, os.SEEK_END)
        h.update(handle.read(_EDGE))
    return h.hexdigest()


def files_digest(paths: Iterable[Path], base: Path | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(set(paths)):
        if path.is_file():
            name = str(path.relative_to(base)) if base and path.is_relative_to(base) else str(path)
            out[name] = file_digest(path)
    return out


def model_fingerprint(pretrained: str, revision: str | None = None) -> dict[str, Any]:
    """A local checkpoint directory: digests of its files; otherwise the id and revision.

    A hub id is resolved offline from the HF cache by lm-eval; its snapshot
    (a commit hash) is what identifies it there.
    """
    path = Path(pretrained)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return {"kind": "local", "files": files_digest(files, path)}
    if path.is_file():  # e.g. a GGUF file
        return {"kind": "file", "digest": file_digest(path)}
    return {"kind": "hub", "id": pretrained, "revision": revision or "main",
            "snapshot": _hub_snapshot(pretrained, revision)}


def _hub_snapshot(model_id: str, revision: str | None) -> str | None:
    home = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or
                Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    ref = home / f"models--{model_id.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        return ref.read_text().strip()
    except OSError:
        return None


def package_version(name: str) -> str | None:
    # metadata, not an import: lm-eval pulls in torch
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
