"""The per-sample export: lm-eval's logged samples in full, readable, one JSON line each.

samples.py keeps a compact form for paired regression tests (hashes, 40-character
cuts). This is the form a person reads when a score looks wrong: with
``--disteval-samples`` the worker writes, beside each stored entry,
``<entry key>.export.jsonl`` with one line per (document, filter)::

    {"entry": "arith_gen", "task": "arith_gen", "doc_id": 3, "filter": "strict-match",
     "doc": {...}, "prompt": "12+34=", "target": "46", "responses": ["46"],
     "filtered": "46", "metrics": {"exact_match": 1.0}, "doc_hash": "3bdd..."}

``choices`` (the continuations scored) is added for log-likelihood tasks, and
``arguments`` (each request's other arguments, e.g. generation kwargs) where a
request has any. The job's results file gets ``<model>.samples.jsonl`` beside
it: its entries' exports, one after another. Values under keys that name a
secret are replaced by ``[redacted]`` at any depth, and so are bearer tokens and
Hugging Face tokens found inside any string. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REDACTED = "[redacted]"
# keys whose values are secrets, compared lower-case with "-" read as "_"
SECRET_KEYS = frozenset({"token", "api_key", "apikey", "password", "secret", "authorization",
                         "access_token", "auth_token", "hf_token", "x_api_key", "client_secret"})
# secrets inside text: "Bearer <token>" and Hugging Face user tokens
_SECRET_TEXT = re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bhf_[A-Za-z0-9]{20,}\b")


def export_path(entry_path: Path) -> Path:
    """``.../<entry key>.json`` -> ``.../<entry key>.export.jsonl``."""
    return entry_path.with_name(entry_path.name.removesuffix(".json") + ".export.jsonl")


def _is_secret(key: Any) -> bool:
    return str(key).strip().lower().replace("-", "_") in SECRET_KEYS


def _redact_text(text: str) -> str:
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or "") + REDACTED, text)


def redact(value: Any) -> Any:
    """``value`` with every secret replaced, at any depth (a copy; tuples become lists)."""
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    return value


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and other objects become numbers or text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)


def _unwrap(value: Any) -> Any:
    # one request's answer per document (generation): the answer, not a list of one
    return value[0] if isinstance(value, list | tuple) and len(value) == 1 else value


def record(sample: dict[str, Any], entry: str, task: str) -> dict[str, Any]:
    """One logged lm-eval sample as an export line (not yet redacted)."""
    arguments = [list(a) if isinstance(a, list | tuple) else [a]
                 for a in sample.get("arguments") or []]
    contexts = [a[0] for a in arguments if a]
    out: dict[str, Any] = {
        "entry": entry, "task": task, "doc_id": sample.get("doc_id"),
        "filter": sample.get("filter", "none"), "doc": sample.get("doc"),
        # every request of a document shares its prompt (a choice's context, a generation's)
        "prompt": contexts[0] if len(set(map(str, contexts))) == 1 else contexts,
        "target": sample.get("target"),
    }
    rest = [a[1:] for a in arguments]
    if arguments and all(len(a) == 2 and isinstance(a[1], str) for a in arguments):
        out["choices"] = [a[1] for a in arguments]  # log-likelihood: the continuations
    elif any(rest):
        out["arguments"] = [_unwrap(r) for r in rest]  # e.g. a generation's kwargs
    out["responses"] = [_unwrap(r) for r in sample.get("resps") or []]
    out["filtered"] = _unwrap(sample.get("filtered_resps"))
    out["metrics"] = {name: sample.get(name) for name in sample.get("metrics") or []}
    out["doc_hash"] = sample.get("doc_hash")
    return out


def lines(logged: dict[str, list[dict[str, Any]]], entry: str,
          tasks: Iterable[str]) -> Iterator[str]:
    """The export lines of an entry's leaf ``tasks``, redacted, in lm-eval's order."""
    for task in tasks:
        for sample in logged.get(task) or []:
            data = redact(plain(record(sample, entry, task)))
            yield json.dumps(data, ensure_ascii=False, sort_keys=False)


def write_export(path: Path, text_lines: Iterable[str]) -> int:
    """Write ``text_lines`` to ``path`` atomically; the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in text_lines:
                handle.write(line + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def assemble(out: Path, parts: Iterable[Path]) -> Path:
    """The job's export: its entries' exports one after another (they are redacted)."""

    def each() -> Iterator[str]:
        for part in parts:
            with part.open(encoding="utf-8") as handle:
                for line in handle:
                    yield line.rstrip("\n")

    write_export(out, each())
    return out
