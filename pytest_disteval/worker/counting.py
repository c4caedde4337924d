"""Counting what the model really ran: requests, tokens and seconds per task.

Runs in the worker. ``RequestCounter.install(lm)`` shadows the three request
methods of the model *instance* (never its class) with wrappers that time each
call and keep a reference to its requests and answers; lm-eval and the model see
the same calls as before, so scores do not change. Tokens are counted after the
run, outside the timed section, with the model's own tokenizer: context +
continuation for ``loglikelihood``, the text for ``loglikelihood_rolling``, the
prompt + the generated text for ``generate_until``.

In shard mode the counter wraps the real model inside the ShardLM, so it counts
only the requests this shard executed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


@dataclass
class _Call:
    kind: str
    requests: list[Any]
    answers: list[Any]
    seconds: float


@dataclass
class TaskCount:
    requests: int = 0
    tokens: int | None = 0  # None: the model has no tokenizer to count with
    model_s: float = 0.0  # seconds in the model's request methods (shared calls apportioned)


@dataclass
class RequestCounter:
    calls: list[_Call] = field(default_factory=list)
    _depth: int = 0

    def install(self, lm: Any) -> Any:
        for kind in KINDS:
            method = getattr(lm, kind, None)
            if callable(method):
                setattr(lm, kind, self._wrap(kind, method))
        return lm

    def _wrap(self, kind: str, method: Callable[[list[Any]], list[Any]]) -> Callable[..., Any]:
        def counted(requests: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
            if self._depth:  # a model whose methods call each other: count the outer call
                return method(requests, *args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                answers = method(requests, *args, **kwargs)
            finally:
                self._depth -= 1
            self.calls.append(_Call(kind, list(requests), list(answers),
                                    time.perf_counter() - t0))
            return answers

        return counted

    def take(self, lm: Any, leaf_to_entry: Callable[[str | None], str | None]
             ) -> dict[str, TaskCount]:
        """Counts per entry name since the last take; requests of no known entry are dropped."""
        calls, self.calls = self.calls, []
        count = token_counter(lm, (text for c in calls for text in _texts(c)))
        out: dict[str, TaskCount] = {}
        for call in calls:
            per_call: dict[str, TaskCount] = {}
            for req, answer in zip(call.requests, call.answers, strict=False):
                entry = leaf_to_entry(getattr(req, "task_name", None))
                if entry is None:
                    continue
                c = per_call.setdefault(entry, TaskCount())
                c.requests += 1
                tokens = _tokens(call.kind, req, answer, count)
                c.tokens = None if tokens is None or c.tokens is None else c.tokens + tokens
            # one call may hold several tasks' requests: its time goes by token share
            # (by request share without a tokenizer)
            weights = {e: float(c.tokens) if c.tokens is not None else float(c.requests)
                       for e, c in per_call.items()}
            total = sum(weights.values()) or 1.0
            for entry, c in per_call.items():
                c.model_s = call.seconds * weights[entry] / total
                acc = out.setdefault(entry, TaskCount())
                acc.requests += c.requests
                acc.tokens = (None if acc.tokens is None or c.tokens is None
                              else acc.tokens + c.tokens)
                acc.model_s += c.model_s
        return out


def _texts(call: _Call) -> Iterable[str]:
    for req, answer in zip(call.requests, call.answers, strict=False):
        args = req.args
        if call.kind == "loglikelihood":
            yield from (a for a in args[:2] if isinstance(a, str))
        elif args and isinstance(args[0], str):
            yield args[0]
        if call.kind == "generate_until" and isinstance(answer, str):
            yield answer


def _tokens(kind: str, req: Any, answer: Any, count: Callable[[str], int | None]) -> int | None:
    args = req.args
    texts = list(args[:2]) if kind == "loglikelihood" else list(args[:1])
    if kind == "generate_until":
        texts.append(answer if isinstance(answer, str) else "")
    counts = [count(t) if isinstance(t, str) else 0 for t in texts]
    if any(n is None for n in counts):
        return None
    return sum(n for n in counts if n is not None)


def token_counter(lm: Any, texts: Iterable[str]) -> Callable[[str], int | None]:
    """Tokens of a text with the model's tokenizer, without special tokens; None without one.

    A Hugging Face tokenizer counts all distinct texts in one batched call; otherwise the
    model's ``tok_encode`` counts them one by one.
    """
    memo: dict[str, int] = {}
    tokenizer = getattr(lm, "tokenizer", None)
    distinct = sorted(set(texts))
    if callable(tokenizer) and distinct:
        try:
            ids = tokenizer(distinct, add_special_tokens=False)["input_ids"]
            memo.update(zip(distinct, (len(i) for i in ids), strict=True))
        except Exception:  # not a Hugging Face tokenizer: one by one below
            memo.clear()
    encode = getattr(lm, "tok_encode", None)

    def count(text: str) -> int | None:
        n = memo.get(text)
        if n is not None:
            return n
        if not callable(encode):
            return None
        try:
            n = len(encode(text))
        except Exception:  # a tok_encode that needs other arguments: no count
            return None
        memo[text] = n
        return n

    return count


def leaf_map(entries: list[tuple[str, str]], group_subtasks: dict[str, Any]
             ) -> Callable[[str | None], str | None]:
    """Which entry a request's ``task_name`` (a leaf task) belongs to; groups expanded."""
    owner: dict[str, str] = {}

    def walk(task: str, entry: str, seen: frozenset[str]) -> None:
        owner.setdefault(task, entry)
        for child in group_subtasks.get(task) or []:
            if child not in seen:
                walk(child, entry, seen | {child})

    for entry, task in entries:
        walk(task, entry, frozenset({task}))
    return lambda name: owner.get(name) if name is not None else None


def host_peak_rss_bytes() -> int:
    """This process's peak RSS plus that of its largest finished child (getrusage, Linux KiB).

    An upper bound on the process tree's peak when the two peaked at different times;
    children still running are not seen (the worker waits for its own).
    """
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int((own + children) * scale)
