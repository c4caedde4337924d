"""YAML loading that remembers where each key and item was written.

Suite errors must name ``file:line``; PyYAML's composed nodes carry marks, so
mappings and sequences are built as dict/list subclasses that keep the line
of every key and item. The C loader is used where libyaml is available:
collection of large suites must stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

try:  # libyaml is ~10x faster; fall back to pure Python where it is missing
    _BaseLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader


class PosDict(dict):  # type: ignore[type-arg]
    """A mapping with ``line`` (its own) and ``key_lines`` (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class PosList(list):  # type: ignore[type-arg]
    """A sequence with ``line`` (its own) and ``item_lines`` (1-based)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


class _PosLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    pass


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> PosDict:
    loader.flatten_mapping(node)
    result = PosDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: Any, node: yaml.SequenceNode) -> PosList:
    result = PosList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_tagged(loader: Any, tag_suffix: str, node: yaml.Node) -> str:
    # lm-eval task YAMLs use `!function module.fn`; keep it as text, never import it
    if isinstance(node, yaml.ScalarNode):
        return f"!{tag_suffix} {node.value}"
    return f"!{tag_suffix}"


_PosLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_PosLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_PosLoader.add_multi_constructor("!", _construct_tagged)


def load(text: str, path: Path | str = "<string>") -> Any:
    """Parse ``text``; a syntax error becomes ``YamlSyntaxError`` with file:line."""
    try:
        return yaml.load(text, Loader=_PosLoader)  # noqa: S506 - safe loader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlSyntaxError(Path(path), line, str(exc.problem or exc)) from None


def load_file(path: Path) -> Any:
    return load(path.read_text(encoding="utf-8"), path)


class YamlSyntaxError(ValueError):
    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: YAML syntax error: {problem}")
        self.path = path
        self.line = line
