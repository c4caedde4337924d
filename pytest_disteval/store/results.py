"""The result store: one JSON file per (model, task entry), written atomically.

An entry holds lm-eval's results for one task (or group, with its subtasks) in
the shape lm-eval writes, plus how and when it was computed. Files are written
to a temporary name and renamed into place, so a run killed mid-write never
leaves an entry a later run would trust; entries already written by a crashed
worker stay valid, which is what lets a rerun redo only the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# the per-task sections of an lm-eval results dict
PER_TASK_SECTIONS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                     "higher_is_better", "n-samples")


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent, sort_keys=True, default=str,
                      separators=None if indent else (",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """Entries under ``root/<model key[:2]>/<model key>/<entry key>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, model_key: str, entry_key: str) -> Path:
        return self.root / model_key[:2] / model_key / f"{entry_key}.json"

    def get(self, model_key: str, entry_key: str) -> dict[str, Any] | None:
        path = self.path(model_key, entry_key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing, or unreadable: recompute rather than trust it
        if not isinstance(data, dict) or data.get("entry_key") != entry_key:
            return None
        return data

    def clear(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def slice_task(results: dict[str, Any], task: str) -> dict[str, Any]:
    """The part of an lm-eval results dict that belongs to ``task`` and its subtasks."""
    names = {task}
    subtasks = results.get("group_subtasks") or {}
    stack = [task]
    while stack:
        for child in subtasks.get(stack.pop(), []) or []:
            if child not in names:
                names.add(child)
                stack.append(child)
    out: dict[str, Any] = {}
    for section in PER_TASK_SECTIONS:
        part = results.get(section)
        if isinstance(part, dict):
            out[section] = {k: v for k, v in part.items() if k in names}
    return out


def merge_entries(entries: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Entries back into one results dict of the shape ``lm_eval --output_path`` writes."""
    merged: dict[str, Any] = {section: {} for section in PER_TASK_SECTIONS}
    for entry in entries:
        for section in PER_TASK_SECTIONS:
            merged[section].update(entry["lm_eval"].get(section, {}))
    merged["config"] = config
    for key in ("lm_eval_version", "date", "git_hash", "transformers_version"):
        for entry in entries:
            if key in entry.get("env", {}):
                merged[key] = entry["env"][key]
                break
    return merged
