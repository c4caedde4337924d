"""Per-document results: lm-eval's logged samples made compact, stored beside an entry.

lm-eval's ``log_samples=True`` gives, per task, one record per (document, filter)
with the whole document, every response and the per-sample metric values. Kept
here, per leaf task, as parallel arrays over the documents::

    {"doc_id": [0, 1, ...], "doc_hash": ["3bddc90393e7", ...],
     "metrics": {"acc,none": [1, 0, ...], "exact_match,strict-match": [...]},
     "target": ["42", ...], "response": {"none": ["42", ...], "strict-match": [...]}}

Only lm-eval's own per-sample values of numeric metrics are kept (a corpus
metric such as bleu logs tuples, which are no per-document score), the hash
is lm-eval's ``doc_hash`` cut to 12 hex digits, and target and response are cut
to a few characters: enough to show an example, small for 10k documents
(about 100 bytes per document and filter). Nothing is recomputed.

The file sits beside the entry (``<entry key>.samples.json``), so the entry's
``lm_eval`` slice stays byte-for-byte what ``simple_evaluate`` returned.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_disteval.store.results import write_json_atomic

SAMPLES_FORMAT = 1
HASH_CHARS = 12
TEXT_CHARS = 40


def samples_path(entry_path: Path) -> Path:
    """``.../<entry key>.json`` -> ``.../<entry key>.samples.json``."""
    return entry_path.with_name(entry_path.name.removesuffix(".json") + ".samples.json")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.strip()
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS - 3] + "..."


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and value.is_integer():
            return int(value)  # "1" instead of "1.0": a third smaller for binary metrics
        return value
    if isinstance(value, str | list | tuple | dict):
        return None
    try:  # numpy scalars
        return _number(float(value))
    except (TypeError, ValueError):
        return None


def _continuation(sample: dict[str, Any], index: Any) -> str | None:
    """The text of choice ``index`` of a multiple-choice sample (its request's continuation)."""
    args = sample.get("arguments")
    if isinstance(index, int) and isinstance(args, list) and 0 <= index < len(args):
        request = args[index]
        if isinstance(request, list | tuple) and len(request) >= 2 and isinstance(request[1], str):
            return request[1]
    return None


def _response(sample: dict[str, Any]) -> str:
    resp = sample.get("filtered_resps")
    # multiple choice: one (loglikelihood, is_greedy) per choice; show the likeliest choice
    if isinstance(resp, list) and resp and all(
            isinstance(r, list | tuple) and len(r) == 2 and isinstance(r[0], int | float)
            for r in resp):
        scores = [float(r[0]) for r in resp]
        best = max(range(len(scores)), key=scores.__getitem__)
        text = _continuation(sample, best)
        return _short(text if text is not None else f"choice {best}")
    if isinstance(resp, list) and len(resp) == 1:
        resp = resp[0]
    return _short(resp)


def _target(sample: dict[str, Any]) -> str:
    target = sample.get("target")
    text = _continuation(sample, target) if isinstance(target, int) else None
    return _short(text if text is not None else target)


def compact(samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's sample records of one task -> parallel arrays over its documents."""
    order: dict[Any, int] = {}
    doc_ids: list[Any] = []
    hashes: list[str] = []
    targets: list[str] = []
    values: dict[str, dict[int, float | int]] = {}
    dropped: set[str] = set()
    responses: dict[str, dict[int, str]] = {}
    for sample in samples:
        doc_id = sample.get("doc_id")
        if doc_id not in order:
            order[doc_id] = len(doc_ids)
            doc_ids.append(doc_id)
            hashes.append(str(sample.get("doc_hash", ""))[:HASH_CHARS])
            targets.append(_target(sample))
        i = order[doc_id]
        flt = str(sample.get("filter", "none"))
        responses.setdefault(flt, {})[i] = _response(sample)
        for name in sample.get("metrics") or []:
            key = f"{name},{flt}"
            value = _number(sample.get(name))
            if value is None:
                dropped.add(key)  # not a per-document score (a corpus metric's tuple)
            else:
                values.setdefault(key, {})[i] = value
    n = len(doc_ids)
    # a metric missing on some document cannot be paired: left out rather than guessed
    metrics = {k: [v[i] for i in range(n)] for k, v in values.items()
               if k not in dropped and len(v) == n}
    response = {flt: [r.get(i, "") for i in range(n)] for flt, r in responses.items()}
    return {"doc_id": doc_ids, "doc_hash": hashes, "metrics": metrics, "target": targets,
            "response": response}


def write_samples(entry_path: Path, entry_key: str, per_task: dict[str, dict[str, Any]]) -> Path:
    path = samples_path(entry_path)
    write_json_atomic(path, {"format": SAMPLES_FORMAT, "entry_key": entry_key,
                             "tasks": per_task}, indent=None)
    return path


def read_samples(entry_path: Path, entry_key: str) -> dict[str, dict[str, Any]] | None:
    """The per-task arrays stored beside an entry, or None (not logged, unreadable, stale)."""
    try:
        data = json.loads(samples_path(entry_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("format") != SAMPLES_FORMAT
            or data.get("entry_key") != entry_key or not isinstance(data.get("tasks"), dict)):
        return None
    return data["tasks"]  # type: ignore[no-any-return]


def entry_samples(results_samples: dict[str, list[dict[str, Any]]],
                  names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The compact samples of the leaf tasks ``names`` (a task entry and its subtasks)."""
    return {name: compact(results_samples[name]) for name in names if name in results_samples}


# ---------------------------------------------------------------- pairing two runs


@dataclass(frozen=True)
class Example:
    doc_id: Any
    target: str
    baseline_response: str
    response: str


@dataclass(frozen=True)
class Pairing:
    """One metric's per-document values of two runs on the same documents."""

    baseline: list[float]
    new: list[float]
    binary: bool
    flipped_worse: list[Example]  # first few documents that got worse (binary metrics)
    flipped_better: list[Example]
    n_worse: int
    n_better: int


def _filter_of(metric: str) -> str:
    return metric.split(",", 1)[1] if "," in metric else "none"


def pair(baseline: dict[str, Any], new: dict[str, Any], metric: str, *,
         higher_is_better: bool, examples: int = 3) -> Pairing | str:
    """Pair ``metric`` across two runs' compact samples; a string says why they cannot be.

    Documents must be the same set: the same doc ids with the same doc hashes
    (a changed prompt or dataset is another document, whatever its id).
    """
    b_values = (baseline.get("metrics") or {}).get(metric)
    n_values = (new.get("metrics") or {}).get(metric)
    if b_values is None or n_values is None:
        side = "the baseline" if b_values is None else "this run"
        return f"{side} has no per-document values of {metric!r}"
    for side, data, values in (("the baseline", baseline, b_values), ("this run", new, n_values)):
        ids, hashes = data.get("doc_id"), data.get("doc_hash")
        if not (isinstance(ids, list) and isinstance(hashes, list) and isinstance(values, list)
                and len(ids) == len(hashes) == len(values)):
            return f"the per-document results of {side} are malformed (arrays of unequal length)"
    b_docs = list(zip(baseline["doc_id"], baseline["doc_hash"], strict=True))
    n_docs = list(zip(new["doc_id"], new["doc_hash"], strict=True))
    b_index = {doc: i for i, doc in enumerate(b_docs)}
    if len(b_docs) != len(n_docs) or set(b_index) != set(n_docs):
        common = len(set(b_index) & set(n_docs))
        return (f"the runs scored different documents ({common} matched by doc id and hash, "
                f"of {len(b_docs)} in the baseline and {len(n_docs)} now)")
    flt = _filter_of(metric)
    b_out: list[float] = []
    n_out: list[float] = []
    worse: list[Example] = []
    better: list[Example] = []
    n_worse = n_better = 0
    binary = True
    for j, doc in enumerate(n_docs):
        i = b_index[doc]
        try:
            b, x = float(b_values[i]), float(n_values[j])
        except (TypeError, ValueError):
            return f"per-document values of {metric!r} are not all numbers"
        if math.isnan(b) or math.isnan(x):
            return f"per-document values of {metric!r} include NaN"
        b_out.append(b)
        n_out.append(x)
        binary = binary and b in (0.0, 1.0) and x in (0.0, 1.0)
        if b == x:
            continue
        got_worse = (x < b) if higher_is_better else (x > b)
        if got_worse:
            n_worse += 1
        else:
            n_better += 1
        bucket = worse if got_worse else better
        if len(bucket) < examples:
            bucket.append(Example(doc[0], str(new["target"][j]),
                                  str((baseline.get("response") or {}).get(flt, [""] * (i + 1))[i]),
                                  str((new.get("response") or {}).get(flt, [""] * (j + 1))[j])))
    return Pairing(b_out, n_out, binary, worse, better, n_worse, n_better)
