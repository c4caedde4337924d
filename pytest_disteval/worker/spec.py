"""What a worker is asked to do (spec.json), and the exit codes it answers with.

The scheduler builds one ``WorkerSpec`` per job; a shard or the scoring worker is
the same spec with a few fields replaced (``dataclasses.replace``). The worker
reads it back with ``WorkerSpec.read``. Standard library only: the scheduler
imports this without the worker's lm-eval, and the worker without the scheduler.

Modes (worker/main.py says what each does): ``direct`` evaluates and stores the
entries; ``shard`` answers shard ``index`` of ``count`` of the requests into the
response store at ``responses``; ``score`` answers every request from that store
and stores the entries, after ``wait_for`` appears when it is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception: its traceback is in the log
EXIT_USAGE = 2  # not started with one spec path
EXIT_BAD_REQUEST = 3  # a problem the user fixes in the suite; the message is in error_path

MODES = ("direct", "shard", "score")


class BadRequest(Exception):
    """A problem the user fixes in the suite, not a crash: the worker exits EXIT_BAD_REQUEST."""


class SpecError(BadRequest, ValueError):
    """A spec the worker cannot run: its message says which key and what is valid."""


@dataclass(frozen=True)
class EntrySpec:
    """One task entry of a run: where its stored result goes, under which key."""

    task: str
    entry_key: str
    path: Path
    name: str | None = None  # the suite's entry name; None: the task's
    samples_at: str | None = None  # file:line of the suite's ``samples``: bad ids name it


@dataclass(frozen=True)
class RunSpec:
    """Entries that share num_fewshot, limit and seeds: one ``simple_evaluate`` call."""

    settings: dict[str, Any]
    entries: tuple[EntrySpec, ...]

    @property
    def tasks(self) -> list[str]:
        return [e.task for e in self.entries]

    def evaluate_kwargs(self, gen_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """``simple_evaluate``'s arguments from these settings, each absent one at lm-eval's
        default (the CLI's); ``gen_kwargs``: the model's, unless the entries have their own."""
        s = self.settings
        return {
            "num_fewshot": s.get("num_fewshot"),
            "limit": s.get("limit"),
            "fewshot_random_seed": s.get("fewshot_seed", 1234),
            "random_seed": s.get("random_seed", 0),
            "numpy_random_seed": s.get("numpy_random_seed", 1234),
            "torch_random_seed": s.get("torch_random_seed", 1234),
            "gen_kwargs": s.get("gen_kwargs", gen_kwargs),
            "apply_chat_template": s.get("apply_chat_template", False),
            "system_instruction": s.get("system_instruction"),
            "fewshot_as_multiturn": s.get("fewshot_as_multiturn", False),
            "bootstrap_iters": s.get("bootstrap_iters", 100000),
        }

    @property
    def metadata(self) -> dict[str, Any]:
        """Task metadata beyond model_args (lm-eval's --metadata): the TaskManager's."""
        return dict(self.settings.get("metadata") or {})


@dataclass(frozen=True)
class ShardSpec:
    index: int
    count: int


@dataclass(frozen=True)
class WorkerSpec:
    error_path: Path  # where a failure's message goes (error.json)
    meta_path: Path  # where a success's timing goes (meta.json)
    backend: str = ""
    lm_eval_model: str = ""  # lm-eval's registry name of the backend's LM
    install_hint: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    batch_size: Any = None  # an int, "auto" or "auto:N": lm-eval reads it
    max_batch_size: int | None = None  # the ceiling of batch_size auto
    device: str | None = None
    gen_kwargs: dict[str, Any] | None = None
    include_paths: tuple[Path, ...] = ()
    workdir: Path = Path(".")
    all_local: bool = False  # every task is a local one: lm-eval's own index is skipped
    model_key: str = ""
    runs: tuple[RunSpec, ...] = ()
    mode: str = "direct"
    responses: Path | None = None  # the response store (shard and score modes)
    shard: ShardSpec | None = None
    run_dir: Path | None = None  # None: the directory of meta_path
    wait_for: Path | None = None  # score mode: the go file the scheduler writes
    session_pid: int | None = None  # score mode: stop waiting when this process is gone
    chunk_size: int | None = None  # shard mode: requests per response store commit
    export_samples: bool = False  # write each entry's readable samples (store/export.py)

    @property
    def directory(self) -> Path:
        """The run directory: shard records, progress files and GPU timelines go here."""
        return self.run_dir or self.meta_path.parent

    @property
    def tasks(self) -> list[str]:
        return [task for run in self.runs for task in run.tasks]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend, "lm_eval_model": self.lm_eval_model,
            "install_hint": self.install_hint, "model_args": self.model_args,
            "batch_size": self.batch_size, "max_batch_size": self.max_batch_size,
            "device": self.device,
            "gen_kwargs": self.gen_kwargs,
            "include_paths": [str(p) for p in self.include_paths],
            "workdir": str(self.workdir), "all_local": self.all_local,
            "model_key": self.model_key,
            "runs": [{"settings": run.settings,
                      "entries": [_entry_dict(e) for e in run.entries]} for run in self.runs],
            "error_path": str(self.error_path), "meta_path": str(self.meta_path),
            "mode": self.mode,
        }
        optional = {"responses": self.responses, "run_dir": self.run_dir,
                    "wait_for": self.wait_for}
        out.update({k: str(v) for k, v in optional.items() if v is not None})
        if self.shard is not None:
            out["shard"] = {"index": self.shard.index, "count": self.shard.count}
        if self.session_pid is not None:
            out["session_pid"] = self.session_pid
        if self.chunk_size is not None:
            out["chunk_size"] = self.chunk_size
        if self.export_samples:
            out["export_samples"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerSpec:
        """The spec in ``data``; SpecError names the key that is wrong and what is valid."""
        if not isinstance(data, dict):
            raise SpecError(f"a worker spec is a JSON object, got {type(data).__name__}")
        mode = data.get("mode", "direct")
        if mode not in MODES:
            raise SpecError(f"worker mode {mode!r} is not one of {', '.join(MODES)}")
        if mode != "direct" and not data.get("responses"):
            raise SpecError(f"worker mode {mode!r} needs 'responses', the response store's path")
        shard = None
        if mode == "shard":
            raw = data.get("shard") or {}
            index = raw.get("index") if isinstance(raw, dict) else None
            count = raw.get("count") if isinstance(raw, dict) else None
            if not (type(index) is int and type(count) is int and 0 <= index < count):
                raise SpecError(f"worker mode 'shard' needs 'shard': {{'index': i, 'count': n}} "
                                f"with 0 <= i < n, got {raw!r}")
            shard = ShardSpec(index, count)
        for key in ("error_path", "meta_path"):
            if not data.get(key):
                raise SpecError(f"a worker spec needs {key!r}, a file path")
        try:
            runs = tuple(RunSpec(dict(run["settings"]),
                                 tuple(EntrySpec(str(e["task"]), str(e["entry_key"]),
                                                 Path(e["path"]), e.get("name"),
                                                 e.get("samples_at"))
                                       for e in run["entries"]))
                         for run in data.get("runs") or ())
        except (KeyError, TypeError) as exc:
            raise SpecError(f"a worker spec's 'runs' are objects with 'settings' and 'entries' "
                            f"(each with 'task', 'entry_key' and 'path'): missing {exc}") from exc
        return cls(
            error_path=Path(data["error_path"]), meta_path=Path(data["meta_path"]),
            backend=str(data.get("backend") or ""),
            lm_eval_model=str(data.get("lm_eval_model") or ""),
            install_hint=str(data.get("install_hint") or ""),
            model_args=dict(data.get("model_args") or {}),
            batch_size=data.get("batch_size"), device=data.get("device"),
            max_batch_size=_positive_int(data.get("max_batch_size"), "max_batch_size"),
            gen_kwargs=data.get("gen_kwargs"),
            include_paths=tuple(Path(p) for p in data.get("include_paths") or ()),
            workdir=Path(data.get("workdir") or "."), all_local=bool(data.get("all_local")),
            model_key=str(data.get("model_key") or ""), runs=runs, mode=mode,
            responses=_path(data.get("responses")), shard=shard,
            run_dir=_path(data.get("run_dir")), wait_for=_path(data.get("wait_for")),
            session_pid=data.get("session_pid") or None,
            chunk_size=int(data["chunk_size"]) if data.get("chunk_size") else None,
            export_samples=bool(data.get("export_samples")))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"a worker spec is JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _entry_dict(entry: EntrySpec) -> dict[str, Any]:
    out: dict[str, Any] = {} if entry.name is None else {"name": entry.name}
    out.update(task=entry.task, entry_key=entry.entry_key, path=str(entry.path))
    if entry.samples_at is not None:
        out["samples_at"] = entry.samples_at
    return out


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def _positive_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise SpecError(f"a worker spec's {key!r} is a positive integer or null, got {value!r}")
    return value
