"""YAML loading for suites and local task YAMLs: strict, fast, and with ``file:line``.

A suite is a contract, so what PyYAML lets pass silently is an error here:

- a key written twice in one mapping (PyYAML keeps the last): both lines are named;
- aliases that expand past ``MAX_ALIAS_EXPANSION`` nodes (an "alias bomb": small on
  disk, billions of nodes for whatever walks it), refused before anything walks them;
- tags that construct objects (``!!python/...``); ``!name value`` local tags only where
  lm-eval reads them (``!function`` in task YAMLs), kept as text, never imported.

libyaml composes the node tree (``yaml.CSafeLoader``'s parser); the nodes are then
turned into Python values by one small function instead of PyYAML's constructor, with
the cyclic GC paused: its passes over a growing heap made a 10,000-entry suite cost
more than linearly. Suites get ``PosDict``/``PosList``, which keep the line of every
key and item (collected items need them); task YAMLs get plain dicts and lists, since
a line there is only needed for an error, and an error is found while building.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml is ~10x faster; fall back to pure Python where it is missing
    _BaseLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

# nodes that aliases may add to a document (beyond those written out): generous for
# anchors reused across a large suite, far below what an alias bomb expands to
MAX_ALIAS_EXPANSION = 1_000_000

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_YAML_TAG = "tag:yaml.org,2002:"
# the scalar and collection tags of YAML 1.1 that SafeConstructor builds, nothing else
_SAFE_TAGS = frozenset(_YAML_TAG + t for t in (
    "null", "bool", "int", "float", "binary", "timestamp", "omap", "pairs", "set", "str",
    "seq", "map", "merge", "value"))


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


class YamlSyntaxError(ValueError):
    """A YAML file that cannot be read as written; ``problem`` is the message without
    ``file:line``."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class _Composer(_BaseLoader):  # type: ignore[misc,valid-type]
    """libyaml's parser and composer; the tag of a plain scalar is resolved once per value."""

    _tags: dict[str, str] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            tag = self._tags.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(self._tags) < 100_000:  # values repeat (keys, numbers); bound the rest
                    self._tags[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


def load(text: str, path: Path | str = "<string>") -> Any:
    """A suite: mappings and sequences as ``PosDict``/``PosList``."""
    return _load(text, Path(path), positions=True, local_tags=False)


def load_task_yaml(text: str, path: Path | str = "<string>") -> Any:
    """An lm-eval task YAML: plain dicts and lists; ``!function x`` kept as ``"!function x"``."""
    return _load(text, Path(path), positions=False, local_tags=True)


def load_file(path: Path) -> Any:
    return load_task_yaml(path.read_text(encoding="utf-8"), path)


def _load(text: str, path: Path, *, positions: bool, local_tags: bool) -> Any:
    paused = gc.isenabled()
    gc.disable()  # see the module docstring: GC passes made large files superlinear
    loader = _Composer(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            line, problem = _syntax_error(exc, text)
            raise YamlSyntaxError(path, line, f"YAML syntax error: {problem}") from None
        if node is None:
            return None
        if "&" in text:  # no anchor, no alias: the check would only cost time
            _check_aliases(node, path)
        return _Builder(loader, path, positions, local_tags).build(node)
    except RecursionError:
        raise YamlSyntaxError(path, 1, "YAML nested too deeply to read") from None
    finally:
        loader.dispose()
        if paused:
            gc.enable()


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    """The line to name and the message: where the broken construct began, when known."""
    problem_mark = exc.problem_mark or exc.context_mark
    line = problem_mark.line + 1 if problem_mark is not None else 1
    problem = str(exc.problem or exc)
    opened = _open_bracket(text, problem_mark.index if problem_mark is not None else len(text))
    if opened is not None:
        # libyaml names the line where it gave up (often the next one or end of file)
        bracket, open_line = opened
        return open_line, f"in the {bracket!r} opened here: {problem} (line {line})"
    context = exc.context or ""
    if context.startswith("while scanning") and exc.context_mark is not None:
        # a quoted scalar or a key without ':': the error is where it starts
        start = exc.context_mark.line + 1
        if start != line:
            return start, f"{context} starting here: {problem} (line {line})"
    return line, f"{context}: {problem}" if context else problem


def _open_bracket(text: str, index: int) -> tuple[str, int] | None:
    """The innermost ``[`` or ``{`` still open at character ``index``, and its line."""
    stack: list[tuple[str, int]] = []
    try:
        for token in yaml.scan(text, Loader=_BaseLoader):
            if token.start_mark.index >= index:
                break
            if isinstance(token, yaml.FlowSequenceStartToken | yaml.FlowMappingStartToken):
                stack.append(("[" if isinstance(token, yaml.FlowSequenceStartToken) else "{",
                              token.start_mark.line + 1))
            elif isinstance(token, yaml.FlowSequenceEndToken | yaml.FlowMappingEndToken):
                if stack:
                    stack.pop()
    except yaml.MarkedYAMLError:
        pass  # the scanner stops at the same error: what it read so far is the answer
    return stack[-1] if stack else None


def _check_aliases(root: Node, path: Path) -> None:
    """Refuse a document whose aliases expand past the bound, before anything walks it."""
    sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias (&a [*a]) counts once, then is refused
        if isinstance(node, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        else:
            total = 1
        sizes[id(node)] = total
        if total > MAX_ALIAS_EXPANSION + len(sizes):
            raise YamlSyntaxError(
                path, node.start_mark.line + 1,
                f"aliases here expand to {total:,} nodes or more (the file itself has "
                f"{len(sizes):,} so far); at most {MAX_ALIAS_EXPANSION:,} more are "
                "allowed: write the values out, or reuse fewer anchors")
        return total

    size(root)


class _Builder:
    """Nodes -> Python values, with duplicate keys and unsafe tags refused."""

    def __init__(self, loader: Any, path: Path, positions: bool, local_tags: bool) -> None:
        self.loader = loader
        self.path = path
        self.positions = positions
        self.local_tags = local_tags
        self.done: dict[int, Any] = {}  # id(node) -> value: an alias shares its anchor's
        self.active: set[int] = set()

    def error(self, node: Node, problem: str) -> YamlSyntaxError:
        return YamlSyntaxError(self.path, node.start_mark.line + 1, problem)

    def build(self, node: Node) -> Any:
        if node.__class__ is ScalarNode:
            if node.tag == _STR:
                return node.value
            return self.scalar(node)
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise self.error(node, "an alias refers to the collection it is in (a cycle)")
        self.active.add(key)
        try:
            if node.__class__ is MappingNode:
                value = self.mapping(node)
            else:
                value = self.sequence(node)
        finally:
            self.active.discard(key)
        self.done[key] = value
        return value

    def tag_problem(self, node: Node) -> str:
        tag = "!!" + node.tag[len(_YAML_TAG):] if node.tag.startswith(_YAML_TAG) else node.tag
        return (f"the tag {tag!r} is not allowed here: a suite holds plain values "
                "(tags that construct Python objects are refused)")

    def scalar(self, node: Node) -> Any:
        tag = node.tag
        if tag.startswith("!"):
            if not self.local_tags:
                raise self.error(node, f"{self.tag_problem(node)}; write the value without "
                                       f"{tag}")
            # lm-eval task YAMLs use `!function module.fn`: kept as text, never imported
            return f"{tag} {node.value}"
        if tag not in _SAFE_TAGS:
            raise self.error(node, self.tag_problem(node))
        try:  # SafeConstructor's own function for the tag, without its bookkeeping
            return self.loader.yaml_constructors[tag](self.loader, node)
        except (yaml.MarkedYAMLError, ValueError) as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
            raise self.error(node, f"{node.value!r}: {problem or exc}") from None

    def mapping(self, node: MappingNode) -> Any:
        if node.tag != _MAP:
            return self.other_collection(node)
        pairs = node.value
        if any(k.tag == _MERGE for k, _ in pairs):
            self.own_keys_once(pairs)
            try:  # `<<: *defaults`: the explicit keys override the merged ones
                self.loader.flatten_mapping(node)
            except yaml.MarkedYAMLError as exc:
                raise self.error(node, str(exc.problem or exc)) from None
            merged = True
        else:
            merged = False
        out: dict[Any, Any] = PosDict() if self.positions else {}
        lines: dict[Any, int] = {}
        build = self.build
        for key_node, value_node in pairs if not merged else node.value:
            if key_node.__class__ is ScalarNode and key_node.tag == _STR:
                key = key_node.value
            else:
                key = self.key(key_node)
            if key in lines and not merged:
                raise self.duplicate(key, lines[key], key_node)
            lines[key] = key_node.start_mark.line + 1
            # one call less per value: most are plain strings
            out[key] = (value_node.value if value_node.__class__ is ScalarNode
                        and value_node.tag == _STR else build(value_node))
        if self.positions:
            out.line = node.start_mark.line + 1  # type: ignore[attr-defined]
            out.key_lines = lines  # type: ignore[attr-defined]
        return out

    def own_keys_once(self, pairs: list[tuple[Node, Node]]) -> None:
        """Duplicates among the keys written in a mapping that also merges others."""
        lines: dict[Any, int] = {}
        for key_node, _ in pairs:
            if key_node.tag != _MERGE:
                key = self.key(key_node)
                if key in lines:
                    raise self.duplicate(key, lines[key], key_node)
                lines[key] = key_node.start_mark.line + 1

    def duplicate(self, key: Any, first: int, again: Node) -> YamlSyntaxError:
        return self.error(again, f"duplicate key {key!r}: written at line {first} and again "
                                 f"at line {again.start_mark.line + 1}; keep one")

    def key(self, node: Node) -> Any:
        if node.__class__ is not ScalarNode:
            raise self.error(node, "mapping keys must be plain values (a name or a number)")
        return node.value if node.tag == _STR else self.scalar(node)

    def sequence(self, node: Node) -> Any:
        if node.tag != _SEQ:
            return self.other_collection(node)
        build = self.build
        items = [child.value if child.__class__ is ScalarNode and child.tag == _STR
                 else build(child) for child in node.value]
        if not self.positions:
            return items
        pos = PosList(items)
        pos.line = node.start_mark.line + 1
        pos.item_lines = [child.start_mark.line + 1 for child in node.value]
        return pos

    def other_collection(self, node: Node) -> Any:
        tag = node.tag
        if tag.startswith("!") and self.local_tags:
            return tag
        if tag not in _SAFE_TAGS:
            raise self.error(node, self.tag_problem(node))
        construct: Callable[..., Any] = self.loader.construct_object  # !!set, !!omap, !!pairs
        try:
            return construct(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.error(node, str(exc.problem or exc)) from None
