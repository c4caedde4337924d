"""The strict YAML loader: what PyYAML lets pass silently is an error naming file and line."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest
import yaml

from pytest_disteval.suite import yamlpos
from pytest_disteval.suite.yamlpos import YamlSyntaxError


def error(text: str, *, task_yaml: bool = False) -> YamlSyntaxError:
    with pytest.raises(YamlSyntaxError) as info:
        (yamlpos.load_task_yaml if task_yaml else yamlpos.load)(text, "s.yaml")
    return info.value


@pytest.mark.parametrize("task_yaml", [False, True])
def test_a_duplicate_key_names_both_lines(task_yaml: bool) -> None:
    exc = error("thresholds:\n  acc: 0.9\n  acc: 0.0\n", task_yaml=task_yaml)
    assert (exc.line, exc.problem) == (
        3, "duplicate key 'acc': written at line 2 and again at line 3; keep one")
    # flow mappings too, and keys that are equal as values (1 and 1.0)
    assert error("{tasks: [], models: [], tasks: []}").problem.startswith("duplicate key 'tasks'")
    assert error("a:\n  1: x\n  1.0: y\n").line == 3


def test_merge_keys_are_not_duplicates_but_explicit_keys_override() -> None:
    data = yamlpos.load("base: &b {dtype: float16, x: 1}\nm:\n  <<: *b\n  dtype: float32\n")
    assert data["m"] == {"dtype": "float32", "x": 1}
    assert data["m"].line_of("dtype") == 4


def test_values_are_those_of_safe_load() -> None:
    text = ("a: .nan\nb: 1_000\nc: yes\nd: 0x10\ne: ~\nf: '1'\ng: [1, {h: 2.5}]\n"
            "i: 2024-01-02\nj: !!str 3\nk: 1:20\n")
    mine, theirs = yamlpos.load(text), yaml.safe_load(text)
    assert repr(mine) == repr(theirs)  # repr: nan != nan
    assert isinstance(mine["g"], yamlpos.PosList) and mine["g"].line_of(1) == 7
    plain = yamlpos.load_task_yaml(text)
    assert type(plain) is dict and type(plain["g"]) is list and repr(plain) == repr(theirs)


def test_positions_of_keys_and_items() -> None:
    data = yamlpos.load("disteval: 1\nmodels:\n  - name: a\n  - name: b\n    tp: 2\n")
    assert data.line_of("models") == 2
    assert data["models"].line_of(1) == 4 and data["models"][1].line_of("tp") == 5


def test_an_alias_bomb_is_refused_before_it_is_walked() -> None:
    # nine levels of ten aliases: 10**9 nodes for whatever serialises it
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nmodel_args:\n  pretrained: m\n  junk: *a9\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    exc = error(text)
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    # the smallest collection past the bound: a5 stands for 1,111,111 nodes
    assert exc.line == 6 and "aliases here expand to 1,111,111 nodes" in exc.problem
    assert f"at most {yamlpos.MAX_ALIAS_EXPANSION:,} more are allowed" in exc.problem


def test_reused_anchors_within_the_bound_load() -> None:
    text = "d: &d {a: 1, b: 2}\nitems:\n" + "".join("  - *d\n" for _ in range(10_000))
    data = yamlpos.load(text)
    assert len(data["items"]) == 10_000 and data["items"][-1] is data["d"]


def test_a_recursive_alias_is_refused() -> None:
    assert "cycle" in error("a: &a [1, *a]\n").problem


def test_tags_that_construct_objects_are_refused() -> None:
    exc = error("x: 1\na: !!python/object/apply:os.system [echo hi]\n", task_yaml=True)
    assert exc.line == 2 and "'!!python/object/apply:os.system' is not allowed" in exc.problem
    assert "'!!python/name:os.system' is not allowed" in error("a: !!python/name:os.system\n")\
        .problem
    # lm-eval's `!function` is text in a task YAML; a suite has no use for local tags
    assert yamlpos.load_task_yaml("f: !function utils.process\n") == {
        "f": "!function utils.process"}
    assert "'!function' is not allowed" in error("f: !function utils.process\n").problem


@pytest.mark.parametrize(("text", "line", "words"), [
    # an unclosed bracket: the line it opens, not the one where libyaml gave up
    ("disteval: 1\nmodels: [\n", 2, "in the '[' opened here"),
    ("a: 1\nb: {c: 1\nd: 2\n", 2, "in the '{' opened here"),
    ("a: 'x\nb: 2\n", 1, "while scanning a quoted scalar starting here"),
    ("a: 1\nb\nc: 2\n", 2, "could not find expected ':'"),
    ("a:\n  b: 1\n c: 2\n", 3, "did not find expected key"),
])
def test_syntax_errors_name_the_line_of_the_mistake(text: str, line: int, words: str) -> None:
    exc = error(text)
    assert exc.line == line and words in exc.problem and exc.problem.startswith("YAML syntax")
    assert str(exc) == f"s.yaml:{line}: {exc.problem}"


def test_non_scalar_keys_are_refused() -> None:
    assert error("? [a, b]\n: 1\n").problem.startswith("mapping keys must be plain values")


def test_load_file_reads_a_task_yaml(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("task: t\ntask: u\n", encoding="utf-8")
    with pytest.raises(YamlSyntaxError) as info:
        yamlpos.load_file(path)
    assert str(info.value).startswith(f"{path}:2: duplicate key 'task'")


def test_a_large_suite_loads_in_linear_time() -> None:
    def entries(n: int) -> str:
        return "tasks:\n" + "".join(f"  - task: t{i}\n    thresholds: {{acc: 0.5}}\n"
                                    for i in range(n))

    def best(text: str) -> float:
        times = []
        for _ in range(3):
            started = time.process_time()
            yamlpos.load(text)
            times.append(time.process_time() - started)
        return min(times)

    small, large = entries(2_000), entries(16_000)
    # 8x the entries; GC passes over a growing heap once made this ~16x or more
    assert best(large) < 12 * best(small)
