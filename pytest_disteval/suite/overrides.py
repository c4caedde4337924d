"""Run-wide overrides: --disteval-limit (quick look, --disteval-limit-seed for a random
subset), --disteval-dtype, --disteval-batch-size, --disteval-model-args,
--disteval-apply-chat-template and --disteval-system-instruction, applied to every model
of every suite as it is loaded.

Applied to the parsed Suite before items and jobs exist, so everything downstream
(model key, entry key, memory estimate, worker spec, results file) sees the
overridden values and nothing else needs to know. Precedence: command line > ini >
environment > the suite.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_disteval.backends import LAYOUT_KEYS
from pytest_disteval.suite.model import MODEL_KEY, Suite, TaskEntry, Threshold

# dtype names that lm-eval's hf model (torch names) and vLLM/SGLang (their --dtype) all take
DTYPES = ("auto", "float32", "float", "float16", "half", "bfloat16")
# --disteval-limit: below this many documents a score's stderr is wide enough to say so
SMALL_N = 100
# --disteval-limit: thresholds without their own tolerance are checked with this many stderrs
LIMIT_TOLERANCE = 2.0


@dataclass(frozen=True)
class Overrides:
    limit: int | None = None  # documents per task entry, at most
    limit_seed: int | None = None  # with limit: documents drawn at random, not the first
    dtype: str | None = None
    batch_size: int | str | None = None
    model_args: tuple[tuple[str, Any], ...] = ()
    apply_chat_template: bool | str | None = None  # None: each entry's own
    system_instruction: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.limit or self.dtype or self.batch_size or self.model_args
                    or self.apply_chat_template is not None
                    or self.system_instruction is not None)

    @property
    def evaluation(self) -> dict[str, Any]:
        """The eval keys (suite/model.py's EVAL_KEYS) these overrides set on every entry."""
        out: dict[str, Any] = {}
        if self.apply_chat_template is not None:
            out["apply_chat_template"] = self.apply_chat_template
        if self.system_instruction is not None:
            out["system_instruction"] = self.system_instruction
        return out


def parse_chat_template(value: object, where: str) -> bool | str:
    """true / false (as lm-eval's bare --apply_chat_template and its absence), or a
    template name."""
    text = str(value).strip()
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    if not text:
        raise pytest.UsageError(f"{where}: give true, false or the name of one of the "
                                "tokenizer's chat templates")
    return text


def parse_system_instruction(value: object, where: str) -> str:
    return str(value)


def parse_limit(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"{where}: {value!r} is not valid: a whole number of "
                                "documents >= 1, e.g. 20")
    return int(text)


def parse_seed(value: object, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise pytest.UsageError(f"{where}: {value!r} is not valid: a whole number >= 0, e.g. 1")
    return int(text)


def parse_dtype(value: object, where: str) -> str:
    text = str(value).strip().lower().removeprefix("torch.")
    if text not in DTYPES:
        raise pytest.UsageError(f"{where}: {value!r} is not a dtype; valid: {', '.join(DTYPES)}")
    return text


def parse_batch_size(value: object, where: str) -> int | str:
    text = str(value).strip().lower()
    if text.isdigit() and int(text) > 0:
        return int(text)
    if re.fullmatch(r"auto(:[1-9]\d*)?", text):
        return text
    raise pytest.UsageError(f"{where}: {value!r} is not valid: a positive integer, 'auto' or "
                            "'auto:N' (as lm-eval's --batch_size takes it)")


def _scalar(text: str) -> Any:
    # as lm-eval's handle_arg_string reads model_args strings
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_model_args(value: object, where: str) -> tuple[tuple[str, Any], ...]:
    pairs: list[tuple[str, Any]] = []
    for part in (p.strip() for p in str(value).split(",")):
        if not part:
            continue
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise pytest.UsageError(f"{where}: {part!r} is not key=value; write e.g. "
                                    "'gpu_memory_utilization=0.8,max_model_len=4096'")
        if key in LAYOUT_KEYS:
            raise pytest.UsageError(f"{where}: {key} is set by the layout; use --tp / --pp / "
                                    "--dp instead")
        if key in set(MODEL_KEY.values()):
            raise pytest.UsageError(f"{where}: {key} names the model; overrides change how "
                                    "models run, not which model (edit the suite)")
        pairs.append((key, _scalar(raw.strip())))
    if not pairs:
        raise pytest.UsageError(f"{where}: {value!r} holds no key=value pair")
    return tuple(pairs)


def capped_limit(limit: int | float | None, cap: int) -> int:
    """``min(suite limit, cap)``; a fraction (its document count is unknown here) gives ``cap``."""
    if isinstance(limit, int):
        return min(limit, cap)
    return cap


def apply(suite: Suite, overrides: Overrides) -> Suite:
    """Apply ``overrides`` to every model and task entry of ``suite`` (in place)."""
    if not overrides.any:
        return suite
    for model in suite.models:
        args = dict(model.model_args)
        if overrides.dtype:
            # the key the suite used, else lm-eval's current name for it
            key = "torch_dtype" if "torch_dtype" in args and "dtype" not in args else "dtype"
            args[key] = overrides.dtype
        args.update(overrides.model_args)
        model.model_args = args
        if overrides.batch_size is not None:
            model.batch_size = overrides.batch_size
        if overrides.limit is not None:
            model.tasks = [_limited(e, overrides.limit, overrides.limit_seed)
                           for e in model.tasks]
        if overrides.evaluation:
            # over every entry's own: a copy each, entries may be shared by models
            model.tasks = [dataclasses.replace(e, evaluation={**e.evaluation,
                                                              **overrides.evaluation})
                           for e in model.tasks]
    return suite


def _limited(entry: TaskEntry, cap: int, seed: int | None = None) -> TaskEntry:
    if entry.samples is not None:
        if len(entry.samples) <= cap:
            return entry  # the suite's own, fewer doc ids: as written
        # the suite's ids, capped: a seeded subset of them, else the first
        ids = (sorted(random.Random(seed).sample(entry.samples, cap)) if seed is not None
               else list(entry.samples[:cap]))
        return dataclasses.replace(entry, samples=tuple(ids),
                                   thresholds=_quick_look(entry.thresholds))
    limit = capped_limit(entry.limit, cap)
    if limit == entry.limit:
        # the suite's own, smaller limit: as written, but drawn at random when asked
        if seed is None or entry.limit_seed is not None:
            return entry
        return dataclasses.replace(entry, limit_seed=seed)
    if seed is not None:
        # the worker draws the ids: only it knows the task's number of documents
        return dataclasses.replace(entry, limit=limit, limit_seed=seed,
                                   thresholds=_quick_look(entry.thresholds))
    # a quick look: a score of few documents is checked within its stderr, unless the
    # suite chose a tolerance itself
    return dataclasses.replace(entry, limit=limit, thresholds=_quick_look(entry.thresholds))


def _quick_look(thresholds: list[Threshold]) -> list[Threshold]:
    return [t if t.tolerance else dataclasses.replace(t, tolerance=LIMIT_TOLERANCE)
            for t in thresholds]


def small_n_note(n: int | None, stderr: float | None, tolerance: float) -> str | None:
    """The warning for a score of few documents, or None."""
    if n is None or n >= SMALL_N:
        return None
    err = f"±{stderr:.4f}" if stderr is not None else "N/A"
    tol = (f"checked with a tolerance of {tolerance:g} x stderr" if tolerance
           else "checked without tolerance")
    return f"n={n} documents (limit): stderr {err}; the threshold is {tol}"
