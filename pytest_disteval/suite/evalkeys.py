"""The evaluation keys (chat template, seeds, bootstrap_iters, metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_disteval.suite import yamlpos
from pytest_disteval.suite.chatfiles import missing_template
from pytest_disteval.suite.checks import (
    _Problems,
)
from pytest_disteval.suite.model import (
    EVAL_KEYS,
    MODEL_KEY,
)

SEED_KEYS = ("random_seed", "numpy_random_seed", "torch_random_seed")


SEED_RANGE = 2**32  # numpy's seeds are 0 .. 2**32 - 1; lm-eval passes each one as given


# lm-eval's spelling of the entry's fewshot_seed (simple_evaluate's fewshot_random_seed)
FEWSHOT_SEED_ALIAS = "fewshot_random_seed"


def _eval_value(key: str, value: Any) -> str | None:
    """Why ``value`` is not valid for eval key ``key``; None when it is."""
    if key == "apply_chat_template":
        if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
            return None
        return "true, false, or the name of one of the tokenizer's chat templates"
    if key == "system_instruction":
        return None if isinstance(value, str) else "a string (the system message)"
    if key == "fewshot_as_multiturn":
        return None if isinstance(value, bool) else "true or false"
    if key in SEED_KEYS:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SEED_RANGE
        return None if ok else f"an integer from 0 to {SEED_RANGE - 1}"
    if key == "bootstrap_iters":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "a whole number >= 0 (0: no stderr)"
    if key in ("gen_kwargs", "metadata"):
        example = ("{max_gen_toks: 64, temperature: 0}" if key == "gen_kwargs"
                   else "{max_seq_lengths: [4096]}")
        return None if isinstance(value, dict) else f"a mapping, e.g. {example}"
    raise KeyError(key)


def _eval_settings(raw: yamlpos.PosDict, where: str, problems: _Problems) -> dict[str, Any]:
    """The eval keys written in ``raw`` (a model, ``defaults`` or a task entry), each checked;
    a bad one is reported at its line and left out."""
    out: dict[str, Any] = {}
    for key in EVAL_KEYS:
        if key not in raw or raw[key] is None:
            continue
        why = _eval_value(key, raw[key])
        if why is not None:
            problems.add(raw.line_of(key), f"{where}{key}",
                         f"{raw[key]!r} is not valid: {why} (lm-eval's --{key})")
            continue
        value = raw[key]
        out[key] = dict(value) if isinstance(value, dict) else value
    return out


def _tokenizer_dir(args: dict[str, Any], backend: str) -> Path | None:
    """The local directory of a model's tokenizer files; None: a hub id, or not an HF one."""
    if backend == "nemo_lm":
        return None
    source = args.get("tokenizer") or args.get(MODEL_KEY[backend])
    path = Path(str(source)) if source else None
    return path if path is not None and path.is_absolute() and path.is_dir() else None


def _check_template_name(raw: yamlpos.PosDict, where: str, evaluation: dict[str, Any],
                         args: dict[str, Any], backend: str, problems: _Problems) -> None:
    """A template name (``apply_chat_template: NAME``) the local tokenizer lacks: the
    suite's error, at its line, rather than the worker's after the model loaded."""
    name = evaluation.get("apply_chat_template")
    directory = _tokenizer_dir(args, backend)
    if not isinstance(name, str) or directory is None:
        return
    why = missing_template(directory, name)
    if why is not None:
        problems.add(raw.line_of("apply_chat_template"), f"{where}apply_chat_template",
                     f"{name!r}: {why}")


def _fewshot_seed_spelling(raw: yamlpos.PosDict, where: str, problems: _Problems) -> str:
    """The key ``raw`` writes its few-shot seed under: fewshot_seed or lm-eval's name."""
    if FEWSHOT_SEED_ALIAS not in raw:
        return "fewshot_seed"
    if "fewshot_seed" in raw:
        problems.add(raw.line_of(FEWSHOT_SEED_ALIAS), f"{where}{FEWSHOT_SEED_ALIAS}",
                     "is another spelling of fewshot_seed, which is set here too; keep one")
    return FEWSHOT_SEED_ALIAS
