"""Which tasks run code the model writes (lm-eval's ``unsafe_code: true``), known at collection.

lm-eval refuses such a task unless ``simple_evaluate(confirm_run_unsafe_code=True)``;
a suite must say so (``confirm_run_unsafe_code: true``), and one that does not is
refused at collection, with the line to add, rather than by a worker minutes later.
Collection does not import lm-eval: its built-in task YAMLs are found by path and read
as text, once per session, and only the few that say ``unsafe_code`` (or include
one that does, or group such tasks) are parsed. Local tasks come from the suite's
``TaskIndex``, whose configs already have their includes merged.
"""

from __future__ import annotations

import importlib.util
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from pytest_disteval.suite.localtasks import LocalTask, LocalTaskError, TaskIndex, load_config

KEY = "confirm_run_unsafe_code"


def is_unsafe(config: dict[str, Any]) -> bool:
    # lm-eval's ConfigurableTask: `if self.config.unsafe_code is not False` (null counts too)
    return "unsafe_code" in config and config["unsafe_code"] is not False


def builtin_tasks_dir() -> Path | None:
    """lm-eval's ``tasks`` folder, found without importing lm-eval (it imports torch)."""
    try:
        spec = importlib.util.find_spec("lm_eval")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        tasks = Path(location) / "tasks"
        if tasks.is_dir():
            return tasks
    return None


def unsafe_reason(task: str, index: TaskIndex | None) -> str | None:
    """Why ``task`` (a local or built-in task, group or tag) runs model code; None if it does
    not. Local names are read through ``index``; built-in ones from lm-eval's YAMLs."""
    return _reason(task, index, set())


def _reason(name: str, index: TaskIndex | None, seen: set[str]) -> str | None:
    if name in seen:
        return None
    seen.add(name)
    local: LocalTask | None = None
    if index is not None and name in index:
        try:
            local = index.get(name)
        except LocalTaskError:
            return None  # reported by the parser already, with its own file:line
    if local is None:
        return builtin_unsafe(builtin_tasks_dir()).get(name)
    if local.kind == "task":
        if not is_unsafe(local.config):
            return None
        said = _first_saying(local.chain or [local.path])
        via = f" (through its include of {said})" if said != local.path else ""
        return f"{local.path} says unsafe_code: true{via}"
    for sub in local.subtasks:
        why = _reason(sub, index, seen)
        if why is not None:
            return f"group {name!r} ({local.path}) runs {sub!r}: {why}"
    return None


def _first_saying(chain: list[Path]) -> Path:
    """The file of an include chain that sets unsafe_code (the last one read wins in lm-eval)."""
    for path in chain:
        try:
            if "unsafe_code" in path.read_text(encoding="utf-8"):
                return path
        except (OSError, UnicodeDecodeError):
            continue
    return chain[0]


_INCLUDE_VALUE = re.compile(r"^[\"']?include[\"']?[ \t]*:[ \t]*([^\n#]*)", re.M)
_LIST_ITEM = re.compile(r"[ \t]*-[ \t]*(\S+)")
_GROUP = re.compile(r"^[\"']?group[\"']?[ \t]*:", re.M)


@cache
def builtin_unsafe(root: Path | None) -> dict[str, str]:
    """lm-eval's built-in task, tag and group names that run model code -> why.

    Built once per session (about 0.3 s for lm-eval 0.4.13's 14,000 YAML files, read as
    text), and only when a suite names a task that is not local.
    """
    if root is None:
        return {}
    texts: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            # task files end .yaml; the files they include may not (cruxeval_common_yaml)
            if "yaml" in name:
                path = os.path.join(dirpath, name)
                try:
                    with open(path, encoding="utf-8") as handle:
                        texts[path] = handle.read()
                except (OSError, UnicodeDecodeError):
                    continue
    # the files that say unsafe_code, then those that include one of them, to a fixed point
    saying = {p for p, text in texts.items() if "unsafe_code" in text}
    included_by: dict[str, list[str]] = {}  # a file name -> the files that include it
    for path, text in texts.items():
        if "include" in text:
            for target in _include_targets(text):
                included_by.setdefault(os.path.basename(target), []).append(path)
    candidates = set(saying)
    todo = list(saying)
    while todo:
        for path in included_by.get(os.path.basename(todo.pop()), []):
            if path not in candidates:
                candidates.add(path)
                todo.append(path)
    reasons: dict[str, str] = {}
    said_real = {os.path.realpath(p) for p in saying}  # include chains hold resolved paths
    for name in sorted(candidates):
        task_file = Path(name)
        if not name.endswith(".yaml"):
            continue  # only .yaml files define tasks (lm-eval's TaskManager)
        try:
            config, chain = load_config(task_file)
        except LocalTaskError:
            continue
        task = config.get("task")
        if not isinstance(task, str) or not is_unsafe(config):
            continue
        said = next((p for p in chain if os.path.realpath(p) in said_real), task_file)
        reasons.setdefault(task, f"lm-eval's {_shown(said, root)} says unsafe_code: true")
        tags = config.get("tag")
        for tag in [tags] if isinstance(tags, str) else tags if isinstance(tags, list) else []:
            if isinstance(tag, str):
                reasons.setdefault(tag, f"tag {tag!r} has task {task!r}: {reasons[task]}")
    # groups that list one of those, to a fixed point (a group of groups)
    groups = {p: t for p, t in texts.items()
              if p.endswith(".yaml") and "group" in t and _GROUP.search(t)}
    while True:
        added = False
        words = re.compile(r"\b(" + "|".join(map(re.escape, sorted(reasons, key=len,
                                                                   reverse=True))) + r")\b")
        for path, text in groups.items():
            if not reasons or not words.search(text):
                continue
            try:
                config, _chain = load_config(Path(path))
            except LocalTaskError:
                continue
            group = config.get("group")
            if not isinstance(group, str) or group in reasons:
                continue
            for sub in _subtasks(config):
                if sub in reasons:
                    reasons[group] = f"group {group!r} runs {sub!r}: {reasons[sub]}"
                    added = True
                    break
        if not added:
            return reasons


def _include_targets(text: str) -> list[str]:
    """The files an lm-eval YAML includes, from its text (one name, or a list of them)."""
    out = []
    for match in _INCLUDE_VALUE.finditer(text):
        value = match.group(1).strip().strip("\"'")
        if value:
            out.append(value)
        else:  # a block list on the following lines
            for line in text[match.end():].split("\n")[1:]:
                item = _LIST_ITEM.match(line)
                if item is None:
                    break
                out.append(item.group(1).strip("\"'"))
    return out


def _subtasks(config: dict[str, Any]) -> list[str]:
    raw = config.get("task") or []
    out = []
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("task"), str):
            out.append(item["task"])
    return out


def _shown(path: Path, root: Path) -> str:
    try:
        return f"tasks/{path.resolve().relative_to(root.resolve())}"
    except ValueError:
        return str(path)
