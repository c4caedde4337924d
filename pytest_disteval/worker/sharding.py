"""Data parallelism by request sharding: shard LMs, the response store, the replay LM.

Every replica (shard) runs lm-eval's own ``simple_evaluate`` with a ``ShardLM``:
lm-eval builds the *full* request list exactly as a single process would, and the
ShardLM hands the real model only the requests of its shard (balanced by token
count), storing each response under (model key, kind, request hash) as it is
computed. Scoring then runs ``simple_evaluate`` once more with a ``ReplayLM`` that
answers every request from the store, so aggregation, groups and stderr are
lm-eval's, untouched, and scores do not depend on dp.

Only lm-eval's public ``LM`` interface is used (the three request methods, ``rank``,
``world_size``, ``Instance.args``) plus ``lm_eval.api.model.hash_args``, the key
lm-eval's own ``CachingLM`` uses; the cost of a request uses the real LM's
``tok_encode`` and ``max_gen_toks`` where it has them (TemplateLM backends), with a
fallback. This module runs in the worker process only.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lm_eval.api.model import LM, hash_args

from pytest_disteval.store.responses import ResponseStore

KINDS = ("loglikelihood", "loglikelihood_rolling", "generate_until")
# the store's kind for chat renderings: a chat history's prompt as the real LM rendered it
CHAT_KIND = "chat_template"
TOKENIZER_NAME_KEY = "tokenizer_name"  # under CHAT_KIND: the real LM's tokenizer_name

# answers for requests of other shards: the right type for lm-eval's metrics, never
# stored, and the metrics they produce are discarded
PLACEHOLDERS: dict[str, Any] = {
    "loglikelihood": (0.0, False),
    "loglikelihood_rolling": 0.0,
    "generate_until": "",
}

DEFAULT_CHUNK_SIZE = 1024  # requests per call of the real LM: a killed shard loses at most one
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when neither the request nor the LM says

Cost = Callable[[Any], float]


# ----------------------------------------------------------------------------- keys


def _samples(kind: str, args: Sequence[Any]) -> bool:
    """Whether a generate_until request samples (its repeats are distinct answers)."""
    if kind != "generate_until" or len(args) < 2 or not isinstance(args[1], dict):
        return False
    gen = args[1]
    temperature = gen.get("temperature")
    return bool(gen.get("do_sample")) or (
        isinstance(temperature, int | float) and temperature > 0 and gen.get("do_sample") is None)


def chat_key(chat_history: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The store key of one chat rendering: what ``apply_chat_template`` was given."""
    return hash_args(CHAT_KIND, [json.dumps(chat_history, sort_keys=True),
                                 bool(add_generation_prompt)])


def request_keys(kind: str, requests: Sequence[Any]) -> list[str]:
    """The store key of each request: ``hash_args(kind, req.args)``, as CachingLM keys it.

    Identical deterministic requests share a key (one answer serves them all). The
    n-th repeat (n >= 1) of a *sampled* request gets ``hash#n``: lm-eval sends each
    of its ``repeats`` as the same Instance and expects independent samples.
    """
    keys: list[str] = []
    seen: dict[str, int] = {}
    for req in requests:
        key = hash_args(kind, req.args)
        if _samples(kind, req.args):
            n = seen.get(key, 0)
            seen[key] = n + 1
            if n:
                key = f"{key}#{n}"
        keys.append(key)
    return keys


# ------------------------------------------------------------------------- balancing


def token_cost(lm: Any, kind: str) -> Cost:
    """A request's cost in tokens: the LM's tokenizer where it has ``tok_encode``.

    Without one, characters / 4. ``generate_until`` adds the tokens it may generate
    (the request's ``max_gen_toks``, else the LM's, else 256).
    """
    encode = getattr(lm, "tok_encode", None)
    memo: dict[str, int] = {}  # contexts repeat across choices and few-shot prompts
    tokenizer = getattr(lm, "tokenizer", None)

    def prime(requests: Sequence[Any]) -> None:
        # one batched call of a fast tokenizer instead of thousands of single encodes
        # (seconds per shard on a 4,000-request job); the counts are the same
        if not callable(tokenizer):
            return
        texts = sorted({a for req in requests for a in req.args[:2] if isinstance(a, str)}
                       - memo.keys())
        if not texts:
            return
        try:
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        except Exception:  # not a Hugging Face tokenizer: count one by one
            return
        memo.update(zip(texts, (len(i) for i in ids), strict=True))

    def count(text: str) -> int:
        n = memo.get(text)
        if n is None:
            n = -1
            if callable(encode):
                try:
                    n = len(encode(text))
                except Exception:  # a backend whose tok_encode needs other arguments
                    n = -1
            if n < 0:
                n = math.ceil(len(text) / 4)
            memo[text] = n
        return n

    default_gen = DEFAULT_MAX_GEN_TOKS
    try:
        default_gen = int(getattr(lm, "max_gen_toks", DEFAULT_MAX_GEN_TOKS))
    except Exception:
        pass

    def cost(req: Any) -> float:
        args = req.args
        if kind == "loglikelihood":
            return count(args[0]) + count(args[1])
        if kind == "generate_until":
            gen = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            return count(args[0]) + int(gen.get("max_gen_toks") or default_gen)
        return count(args[0])

    cost.prime = prime  # type: ignore[attr-defined]
    return cost


@dataclass
class _Unit:
    """Requests that go to one shard together: those sharing a loglikelihood context
    (so a backend can reuse the context's logits), else one distinct request."""

    tiebreak: str
    cost: float = 0.0
    keys: list[str] = field(default_factory=list)


def _units(kind: str, requests: Sequence[Any], keys: Sequence[str],
           cost: Cost) -> tuple[list[_Unit], dict[str, _Unit]]:
    by_group: dict[str, _Unit] = {}
    of_key: dict[str, _Unit] = {}
    for req, key in zip(requests, keys, strict=True):
        if key in of_key:
            continue  # a duplicate costs nothing: one answer serves both
        group = hash_args(kind, [req.args[0]]) if kind == "loglikelihood" else key
        unit = by_group.get(group)
        if unit is None:
            unit = by_group[group] = _Unit(tiebreak=group)
        unit.cost += max(float(cost(req)), 0.0)
        unit.keys.append(key)
        of_key[key] = unit
    # longest first; equal costs ordered by hash, never by Python's hash randomization
    units = sorted(by_group.values(), key=lambda u: (-u.cost, u.tiebreak))
    return units, of_key


def _assign_units(units: list[_Unit], count: int) -> dict[str, int]:
    """LPT: each unit, longest first, onto the least-loaded shard (lowest index on ties)."""
    loads = [(0.0, i) for i in range(count)]
    heapq.heapify(loads)
    shard_of: dict[str, int] = {}
    for unit in units:
        load, index = heapq.heappop(loads)
        shard_of[unit.tiebreak] = index
        heapq.heappush(loads, (load + unit.cost, index))
    return shard_of


def assign_shards(requests: Sequence[Any], kind: str, count: int, cost: Cost,
                  keys: Sequence[str] | None = None) -> list[int]:
    """The shard (0..count-1) of each request, balanced by ``cost`` (tokens).

    Deterministic: a function of the requests' args and costs only, so every replica
    that builds the same full request list computes the same assignment.
    """
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    keys = request_keys(kind, requests) if keys is None else keys
    units, of_key = _units(kind, requests, keys, cost)
    shard_of = _assign_units(units, count)
    return [shard_of[of_key[key].tiebreak] for key in keys]


# ------------------------------------------------------------------------ shard LM


@dataclass
class KindStats:
    requests: int = 0  # requests lm-eval sent (the full list, every shard)
    distinct: int = 0  # distinct keys among them
    in_shard: int = 0  # distinct keys assigned to this shard
    already_stored: int = 0  # of those, found in the store (not executed again)
    executed: int = 0  # run on the real LM by this process
    tokens: float = 0.0  # cost of the executed requests (the balancing measure)
    seconds: float = 0.0  # in the real LM and the store, for the executed requests
    plan_s: float = 0.0  # costing, assigning and looking up this shard's requests

    def add(self, other: KindStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class ShardLM(LM):
    """Runs the real LM on this shard's requests only; stores each response.

    lm-eval sees a single process (rank 0 of 1), so it builds the full request
    list; requests of other shards get placeholders, which are never stored.
    """

    def __init__(self, lm: LM, store: ResponseStore, model_key: str, index: int, count: int,
                 *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 cost: Callable[[LM, str], Cost] = token_cost,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__()
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} is outside 0..{count - 1}")
        if getattr(lm, "world_size", 1) != 1:
            # lm-eval would split documents per rank: the request list would not be full
            raise ValueError("ShardLM needs a single-process LM (world_size 1); "
                             "shard across processes with dp instead")
        self.lm = lm
        self.store = store
        self.model_key = model_key
        self.index = index
        self.count = count
        self.chunk_size = max(1, int(chunk_size))
        self._cost = cost
        self._log = log or (lambda message: None)
        self.stats: dict[str, KindStats] = {}
        # when lm-eval first asked for responses: what came before was building requests
        self.first_request_at: float | None = None
        if hasattr(lm, "MULTIMODAL"):
            self.MULTIMODAL = lm.MULTIMODAL
        self._renders: dict[str, Any] = {}  # chat key -> the real LM's rendering

    # chat templating builds the requests: it must be the real LM's. Each rendering is
    # kept and stored (kind CHAT_KIND) so the scorer, which has no model, renders alike
    @property
    def tokenizer_name(self) -> str:
        name = self.lm.tokenizer_name
        self._renders[TOKENIZER_NAME_KEY] = name
        return name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.lm.chat_template(chat_template)

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        text = self.lm.apply_chat_template(chat_history, add_generation_prompt)
        self._renders[chat_key(chat_history, add_generation_prompt)] = text
        return text

    def flush_renders(self) -> None:
        """Store the chat renderings made since the last flush (every shard stores them
        all: the first stored wins, and the scorer needs only one shard's)."""
        if self._renders:
            renders, self._renders = self._renders, {}
            self.store.put_many(self.model_key, CHAT_KIND, renders.items())

    def take_stats(self) -> dict[str, KindStats]:
        stats, self.stats = self.stats, {}
        return stats

    def take_first_request_at(self) -> float | None:
        first, self.first_request_at = self.first_request_at, None
        return first

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        return self._run("loglikelihood", requests)

    def loglikelihood_rolling(self, requests: list[Any]) -> list[Any]:
        return self._run("loglikelihood_rolling", requests)

    def generate_until(self, requests: list[Any]) -> list[Any]:
        return self._run("generate_until", requests)

    def _run(self, kind: str, requests: list[Any]) -> list[Any]:
        planning = time.perf_counter()
        if self.first_request_at is None:
            self.first_request_at = planning
        # lm-eval renders every prompt before it asks for the first response
        self.flush_renders()
        stats = self.stats.setdefault(kind, KindStats())
        keys = request_keys(kind, requests)
        cost = self._cost(self.lm, kind)
        prime = getattr(cost, "prime", None)
        if callable(prime):
            prime(requests)
        units, of_key = _units(kind, requests, keys, cost)
        shard_of = _assign_units(units, self.count)
        first: dict[str, Any] = {}
        for req, key in zip(requests, keys, strict=True):
            first.setdefault(key, req)
        # this shard's keys, longest units first (similar lengths batch together)
        mine = [k for u in units if shard_of[u.tiebreak] == self.index for k in u.keys]
        answers = self.store.get_many(self.model_key, kind, mine)
        todo = [k for k in mine if k not in answers]
        stats.requests += len(requests)
        stats.distinct += len(first)
        stats.in_shard += len(mine)
        stats.already_stored += len(mine) - len(todo)
        stats.plan_s += time.perf_counter() - planning
        self._log(f"[disteval] shard {self.index}/{self.count} {kind}: {len(mine)} of "
                  f"{len(first)} distinct requests, {len(mine) - len(todo)} already stored, "
                  f"{len(todo)} to run")
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            t0 = time.perf_counter()
            out = getattr(self.lm, kind)([first[k] for k in chunk])
            if len(out) != len(chunk):
                raise RuntimeError(f"{type(self.lm).__name__}.{kind} returned {len(out)} "
                                   f"responses for {len(chunk)} requests")
            # stored as computed: a killed shard redoes only what is missing
            self.store.put_many(self.model_key, kind, zip(chunk, out, strict=True))
            answers.update(zip(chunk, out, strict=True))
            stats.executed += len(chunk)
            stats.tokens += sum(cost(first[k]) for k in chunk)
            stats.seconds += time.perf_counter() - t0
        placeholder = PLACEHOLDERS[kind]
        return [answers.get(k, placeholder) for k in keys]


# ----------------------------------------------------------------------- replay LM


class MissingResponses(RuntimeError):
    """The store lacks responses a replay needs (a shard not run, or not finished)."""


class ReplayLM(LM):
    """Answers every request from the store; loads no model.

    lm-eval's evaluate needs the three request methods, ``rank`` and ``world_size``
    (the base class's 0 and 1) from it, and with a chat template ``apply_chat_template``
    and ``tokenizer_name``: those answer from the renderings the shards stored, so
    the prompts, and so the request keys, are the shards' to the byte. Requests are
    keyed exactly as ShardLM keys them.
    """

    @property
    def tokenizer_name(self) -> str:
        found = self.store.get_many(self.model_key, CHAT_KIND, [TOKENIZER_NAME_KEY])
        return str(found.get(TOKENIZER_NAME_KEY, ""))

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        key = chat_key(chat_history, add_generation_prompt)
        found = self.store.get_many(self.model_key, CHAT_KIND, [key])
        if key not in found:
            raise MissingResponses(
                f"the response store {self.store.path} (model key {self.model_key[:12]}) "
                "holds no chat rendering of a prompt this run builds: the shards ran "
                "without this chat template, or did not finish. Run the shards again.")
        return str(found[key])

    def __init__(self, store: ResponseStore, model_key: str, *, multimodal: bool = False) -> None:
        super().__init__()
        self.store = store
        self.model_key = model_key
        if multimodal:
            # lm-eval refuses multimodal tasks unless the LM says it takes them
            self.MULTIMODAL = True
        self.replayed: dict[str, int] = {}

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        return self._replay("loglikelihood", requests)

    def loglikelihood_rolling(self, requests: list[Any]) -> list[Any]:
        return self._replay("loglikelihood_rolling", requests)

    def generate_until(self, requests: list[Any]) -> list[Any]:
        return self._replay("generate_until", requests)

    def _replay(self, kind: str, requests: list[Any]) -> list[Any]:
        keys = request_keys(kind, requests)
        answers = self.store.get_many(self.model_key, kind, keys)
        missing = {k for k in keys if k not in answers}
        if missing:
            held = self.store.counts(self.model_key)
            summary = ", ".join(f"{k} {n}" for k, n in sorted(held.items())) or "nothing"
            raise MissingResponses(
                f"{len(missing)} of {len(set(keys))} distinct {kind} responses are missing "
                f"from the response store {self.store.path} (model key "
                f"{self.model_key[:12]}); it holds for this model: {summary}. "
                "Run the missing shards (or rerun a killed one) before scoring.")
        self.replayed[kind] = self.replayed.get(kind, 0) + len(requests)
        return [answers[k] for k in keys]
