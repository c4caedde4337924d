"""Shared checks of suite values: the schema's keys, names, marks, and the problems list."""

from __future__ import annotations

import difflib
import json
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

from pytest_disteval.suite import yamlpos

SCHEMA_PATH = Path(__file__).with_name("suite.schema.json")


# the metrics whose range lm-eval fixes: its registry's means of per-document 0/1 scores,
# and Matthews' correlation; other metrics (f1, bleu, perplexity, a task's own) unchecked
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("acc", "acc_norm", "acc_mutual_info", "acc_bytes", "acc_all",
                     "exact_match"), (0.0, 1.0)),
    "mcc": (-1.0, 1.0),
}


NAME_RULE = "use letters (of any script), digits and . _ + -"


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _keys(definition: str) -> tuple[str, ...]:
    node = schema() if definition == "suite" else schema()["$defs"][definition]
    return tuple(node["properties"])


def _name_chars(name: Any) -> bool:
    # letters with their marks (Devanagari's vowel signs are marks, not letters) and digits
    return isinstance(name, str) and bool(name) and all(
        c in "_.+-" or unicodedata.category(c)[0] in "LMN" for c in name)


def _valid_name(name: Any) -> bool:
    # NFC only: two spellings of one visible name would be two models, two results files
    return _name_chars(name) and unicodedata.is_normalized("NFC", name)


def _name_rule(name: Any) -> str:
    if _name_chars(name):
        return (f"write it in Unicode's composed form (NFC: "
                f"{unicodedata.normalize('NFC', name)!r}), as editors do")
    return NAME_RULE


def _optional_mapping(raw: yamlpos.PosDict, key: str, where: str, example: str,
                      problems: _Problems) -> yamlpos.PosDict | None:
    """``raw[key]`` when it is a mapping; None when absent or (reported) not a mapping."""
    value = raw.get(key)
    if value is None or isinstance(value, yamlpos.PosDict):
        return value
    problems.add(raw.line_of(key), f"{where}.{key}", f"must be a mapping, e.g. {example}")
    return None


def _marks(raw: yamlpos.PosDict, key: str, where: str, problems: _Problems) -> list[str]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(m, str) and m.isidentifier() for m in value
    ):
        problems.add(raw.line_of(key), f"{where}{key}",
                     "must be a list of pytest marker names (identifiers), e.g. [slow, nightly]")
        return []
    return list(value)


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[tuple[int, str, str]] = []

    def add(self, line: int, key: str, message: str) -> None:
        if (line, key, message) not in self.items:  # defaults are read once per entry
            self.items.append((line, key, message))

    def unknown_keys(self, mapping: yamlpos.PosDict, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.add(mapping.line_of(key), f"{where}{key}",
                         f"unknown key{did}; valid keys here: {', '.join(allowed)}")


def _line(container: Any, key: Any, default: int) -> int:
    if isinstance(container, yamlpos.PosDict | yamlpos.PosList):
        return container.line_of(key)
    return default
