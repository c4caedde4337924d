"""lm-eval's built-in task names, read from its task YAMLs without importing it, once."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from pytest_disteval.jobs.fingerprint import package_version
from pytest_disteval.suite.localtasks import TaskIndex


def _builtin_index() -> TaskIndex | None:
    """lm-eval's own task YAMLs, indexed by regex without importing lm-eval (~3 s)."""
    tasks_dir = lm_eval_tasks_dir()
    return TaskIndex([tasks_dir]) if tasks_dir is not None else None


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's built-in task YAMLs, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def unknown_task(task: str, include_paths: Iterable[Path],
                 at: object = None) -> tuple[str, str] | None:
    """Why lm-eval will not know ``task`` (what is wrong, the fix); None when it may.

    None too when lm-eval is not installed here: then nothing is known (software.py says so).
    """
    builtin = builtin_task_names()
    if builtin is None:
        return None
    include = tuple(include_paths)
    local = task_names(include)
    if task in local or task in builtin:
        return None
    # a local near miss first: arith_mcq beside arith_mc is a typo of the suite's own task
    hint = (difflib.get_close_matches(task, sorted(local), n=1)
            or difflib.get_close_matches(task, sorted(builtin), n=3))
    where = ", ".join(str(p) for p in include) or "none"
    version = package_version("lm_eval")
    return (f"task {task!r}{f' ({at})' if at else ''} is neither a local task (the suite's "
            f"include: {where}) nor one of the {len(builtin)} built-in tasks, groups and "
            f"tags of lm-eval{' ' + version if version else ''}"
            + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""),
            "correct the name (lm-eval ls tasks lists the built-in ones), or add the "
            "directory of its YAML to the suite's include")


_BUILTIN_LOCK = threading.Lock()  # jobs prefetched side by side index lm-eval's tasks once


def builtin_task_names() -> frozenset[str] | None:
    """Every name lm-eval's TaskManager registers (tasks, groups, tags), once per session."""
    tasks_dir = lm_eval_tasks_dir()
    if tasks_dir is None:
        return None
    with _BUILTIN_LOCK:
        return task_names((tasks_dir,))


# a top-level key of a task YAML, quoted or not ("task": x is common in generated ones)
_KEY_RE = re.compile(r"""^(["']?)(task|group|tag|include)\1[ \t]*:[ \t]*([^\n]*)""", re.M)


_ITEM_RE = re.compile(r"\n[ \t]*-[ \t]*([^\n]*)")  # one "- name" line of a block list


_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's TaskIndex skips them


@lru_cache(maxsize=64)
def task_names(roots: tuple[Path, ...]) -> frozenset[str]:
    """Task, group and tag names of the task YAMLs under ``roots``, without parsing them.

    As lm-eval's TaskIndex registers them: tags come from the file or from the files it
    includes (``_default_template_yaml``), keys may be quoted. A superset is harmless (the
    worker checks again); a name missed would fail a job lm-eval would have run, so
    tests/integration/test_precheck_runs.py compares this with lm-eval's own index.
    """
    keys: dict[str, dict[str, list[str]]] = {}
    named: dict[str, set[str]] = {}  # a template included by a thousand files is read once
    names: set[str] = set()
    for root in roots:
        # strings, not Paths: 14k files, and pathlib costs more than reading them
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
            for file in files:
                if file.endswith((".yaml", ".yml")):
                    names.update(_yaml_names(os.path.join(folder, file), keys, named, ()))
    return frozenset(names)


def _yaml_names(path: str, keys: dict[str, dict[str, list[str]]],
                named: dict[str, set[str]], stack: tuple[str, ...]) -> set[str]:
    if path in named:
        return named[path]
    found = _top_keys(path, keys)
    names = {*found.get("task", ()), *found.get("group", ()), *found.get("tag", ())}
    for include in found.get("include", ()):
        included = os.path.normpath(os.path.join(os.path.dirname(path), include))
        if included not in stack:  # an include cycle is lm-eval's error, not a hang here
            names.update(_yaml_names(included, keys, named, (*stack, path)))
    named[path] = names
    return names


def _top_keys(path: str, cache: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """The values of ``task``, ``group``, ``tag`` and ``include`` in one file (read once)."""
    if path in cache:
        return cache[path]
    found: dict[str, list[str]] = {}
    cache[path] = found
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return found
    for match in _KEY_RE.finditer(text):
        key, rest = match.group(2), match.group(3).strip()
        values: list[str] = []
        if rest and not rest.startswith(("[", "#")):
            value = _scalar(rest)
            values = [value] if value else []
        elif key in {"tag", "include"}:  # a list; under task: it is a group's members
            if rest.startswith("["):
                values = [v for v in map(_scalar, rest[1:].split("]", 1)[0].split(",")) if v]
            else:
                pos = match.end()
                while (item := _ITEM_RE.match(text, pos)) is not None:
                    value = _scalar(item.group(1))
                    if value:
                        values.append(value)
                    pos = item.end()
        # a key written twice: either may be the one lm-eval reads, keep both
        found.setdefault(key, []).extend(values)
    return found


def _scalar(text: str) -> str | None:
    """A YAML scalar as written on one line: quoted, or plain up to a comment."""
    text = text.strip()
    if text[:1] in {'"', "'"}:
        end = text.find(text[0], 1)
        return (text[1:end] or None) if end > 0 else None
    return re.split(r"[ \t]#", text, maxsplit=1)[0].strip() or None
