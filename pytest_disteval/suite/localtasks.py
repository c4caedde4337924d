"""Index of the lm-eval task YAMLs found under a suite's include paths.

Collection must not import lm-eval, yet it has to know which metrics a local
task produces (to reject a threshold on a metric that will never exist) and
which files decide its scores (for the cache key). lm-eval's YAML is read here
with the few rules that matter for that: ``include:`` inheritance, default
metrics per output type, and filter names that become ``metric,filter`` keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_disteval.suite import yamlpos

# lm_eval.api.registry.DEFAULT_METRIC_REGISTRY, copied so collection stays import-free
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "loglikelihood": ("perplexity", "acc"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
}
# metrics whose smaller values are better (lm-eval's `higher_is_better: false` defaults)
LOWER_IS_BETTER = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"}
)

_NAME_RE = re.compile(r"^(task|group):[ \t]*['\"]?([^'\"\n#\[]+?)['\"]?[ \t]*(?:#.*)?$", re.M)


@dataclass
class LocalTask:
    """What collection knows of one task or group defined in a local YAML."""

    name: str
    path: Path
    kind: str  # "task" or "group"
    config: dict[str, Any]
    subtasks: list[str] = field(default_factory=list)
    chain: list[Path] = field(default_factory=list)  # this YAML and the ones it includes
    _missing_absolute: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def output_type(self) -> str | None:
        value = self.config.get("output_type")
        return value if isinstance(value, str) else None

    @property
    def metrics_known(self) -> bool:
        """False when a metric is a ``!function``: what it reports is known only after a run
        (humaneval's ``!function utils.pass_at_k`` reports ``pass@1``)."""
        metric_list = self.config.get("metric_list")
        return self.kind == "group" or not isinstance(metric_list, list) or not any(
            isinstance(e, dict) and str(e.get("metric", "")).startswith("!function ")
            for e in metric_list)

    def metric_keys(self) -> dict[str, bool]:
        """Map ``metric,filter`` -> higher_is_better for the metrics this task reports."""
        if self.kind == "group":
            keys: dict[str, bool] = {}
            for entry in self.config.get("aggregate_metric_list") or []:
                if not isinstance(entry, dict) or "metric" not in entry:
                    continue
                for flt in entry.get("filter_list") or ["none"]:
                    keys[f"{entry['metric']},{flt}"] = _higher(entry["metric"], entry)
            return keys
        metrics: list[tuple[str, bool]] = []
        metric_list = self.config.get("metric_list")
        if isinstance(metric_list, list):
            for entry in metric_list:
                if isinstance(entry, dict) and "metric" in entry:
                    metrics.append((str(entry["metric"]), _higher(str(entry["metric"]), entry)))
        else:
            for name in DEFAULT_METRICS.get(self.output_type or "", ()):
                metrics.append((name, name not in LOWER_IS_BETTER))
        filters = ["none"]
        filter_list = self.config.get("filter_list")
        if isinstance(filter_list, list) and filter_list:
            filters = [str(f.get("name", "none")) for f in filter_list if isinstance(f, dict)]
        return {f"{m},{flt}": hib for m, hib in metrics for flt in filters}

    def data_files(self) -> list[str]:
        """Local data files named by ``dataset_kwargs.data_files`` (as written)."""
        kwargs = self.config.get("dataset_kwargs")
        if not isinstance(kwargs, dict):
            return []
        spec = kwargs.get("data_files")
        out: list[str] = []
        _flatten_paths(spec, out)
        return out

    def missing_absolute_data_files(self) -> list[str]:
        """Data files given by an absolute path that does not exist (checked once per task:
        10,000 entries may name one task)."""
        if self._missing_absolute is None:
            self._missing_absolute = [spec for spec in self.data_files()
                                      if Path(spec).is_absolute() and not Path(spec).exists()]
        return self._missing_absolute

    def dataset_path(self) -> str | None:
        value = self.config.get("dataset_path")
        return value if isinstance(value, str) else None


def _higher(metric: str, entry: dict[str, Any]) -> bool:
    value = entry.get("higher_is_better")
    if isinstance(value, bool):
        return value
    return metric not in LOWER_IS_BETTER


def _flatten_paths(spec: Any, out: list[str]) -> None:
    if isinstance(spec, str):
        out.append(spec)
    elif isinstance(spec, list):
        for item in spec:
            _flatten_paths(item, out)
    elif isinstance(spec, dict):
        for item in spec.values():
            _flatten_paths(item, out)


class TaskIndex:
    """Task and group names under include paths -> the YAML file that defines them.

    Names are found with a line regex (cheap for thousands of files); a file is
    parsed in full only when one of its tasks is used.
    """

    def __init__(self, include_paths: list[Path]) -> None:
        self.include_paths = include_paths
        self._files: dict[str, Path] = {}
        self._parsed: dict[str, LocalTask] = {}
        self._errors: dict[str, LocalTaskError] = {}
        for root in include_paths:
            for path in sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml")):
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                for match in _NAME_RE.finditer(text):
                    # first definition wins, as in lm-eval's TaskManager
                    self._files.setdefault(match.group(2).strip(), path)

    def names(self) -> list[str]:
        return sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def files(self) -> list[Path]:
        """Every YAML and Python file under the include paths (they may include each other)."""
        found: list[Path] = []
        for root in self.include_paths:
            found.extend(p for p in root.rglob("*") if p.suffix in {".yaml", ".yml", ".py"})
        return sorted(set(found))

    def get(self, name: str) -> LocalTask | None:
        """The task or group ``name`` (None if not local); ``LocalTaskError`` if unreadable."""
        if name in self._parsed:
            return self._parsed[name]
        if name in self._errors:
            raise self._errors[name]
        path = self._files.get(name)
        if path is None:
            return None
        chain: list[Path] = []
        try:
            config = _load_with_includes(path, chain)
        except LocalTaskError as exc:
            self._errors[name] = exc  # every entry naming it gets the same error, parsed once
            raise
        if isinstance(config.get("group"), str) and config.get("group") == name:
            raw = config.get("task") or []
            subtasks = [
                t if isinstance(t, str) else str(t.get("task", "")) if isinstance(t, dict) else ""
                for t in (raw if isinstance(raw, list) else [raw])
            ]
            task = LocalTask(name, path, "group", config, [s for s in subtasks if s], chain)
        else:
            task = LocalTask(name, path, "task", config, chain=chain)
        self._parsed[name] = task
        return task

    def resolve(self, name: str) -> LocalTask | None:
        """``get``, and for a group every local subtask too: collection reads them all, so
        a broken YAML anywhere under a suite's task is a collection error."""
        task = self.get(name)
        stack = list(task.subtasks) if task is not None else []
        seen = {name}
        while stack:
            sub = stack.pop()
            if sub in seen:
                continue
            seen.add(sub)
            child = self.get(sub)
            if child is not None:
                stack.extend(child.subtasks)
        return task


class LocalTaskError(ValueError):
    """A local task YAML that cannot be used: ``path``, ``line`` and ``problem``."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


def load_config(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """A task YAML's config with its includes merged, and the files read for it."""
    chain: list[Path] = []
    return _load_with_includes(path, chain), chain


_INCLUDE_RE = re.compile(r"^include[ \t]*:", re.M)


def _include_line(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 1
    match = _INCLUDE_RE.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def _load_with_includes(path: Path, chain: list[Path],
                        stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``path``'s config with its includes merged; every file read is appended to ``chain``."""
    if path in stack:
        cycle = " -> ".join(p.name for p in [*stack[stack.index(path):], path])
        raise LocalTaskError(stack[-1], _include_line(stack[-1]),
                             f"include cycle: {cycle}; lm-eval cannot load these tasks")
    if path not in chain:
        chain.append(path)
    try:
        data = yamlpos.load_file(path)
    except yamlpos.YamlSyntaxError as exc:
        raise LocalTaskError(path, exc.line, exc.problem) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalTaskError(path, 1, f"cannot be read: {exc}") from None
    if not isinstance(data, dict):
        return {}
    merged: dict[str, Any] = {}
    include = data.get("include")
    includes = [include] if isinstance(include, str) else include
    if include is not None and not (isinstance(includes, list)
                                    and all(isinstance(i, str) for i in includes)):
        raise LocalTaskError(path, _include_line(path),
                             f"include: {include!r} is not valid: a path to a task YAML "
                             "(or a list of them), relative to this file")
    # as lm-eval 0.4.13's tasks/_yaml_loader.load_yaml: a later include wins over an earlier
    # one, the file's own keys over both
    for rel in includes or []:
        inc_path = (path.parent / rel).resolve()
        if not inc_path.is_file():
            # lm-eval fails on it when the task loads; here it is a collection error
            raise LocalTaskError(path, _include_line(path),
                                 f"include: {rel!r} does not exist (looked for {inc_path})")
        merged.update(_load_with_includes(inc_path, chain, (*stack, path)))
    merged.update({k: v for k, v in data.items() if k != "include"})
    return merged
