"""Suites broken on purpose, each beside a good one (issue 19).

Every broken suite is one collection error naming its file and line; the good suite
beside it still passes; nothing of the broken one reaches the store. The good suite's
results are computed once (``warm_store``) and then come from the store, so no case
starts a worker: a new entry under ``store/`` would be the broken suite's.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from conftest import SUITES, Demo
from helpers import model_block, write_suite

GOOD_TASKS = """\
tasks:
  - task: arith_mc
    limit: 8
    thresholds: {acc: 0.0}
"""


def good_suite(demo: Demo) -> str:
    return f"disteval: 1\ninclude: [tasks]\nmodels:\n{model_block('good', demo.good)}{GOOD_TASKS}"


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def warm_store(tmp_path_factory: pytest.TempPathFactory, demo: Demo) -> Path:
    """A disteval dir holding the good suite's results, computed once for the module."""
    root = tmp_path_factory.mktemp("warm")
    shutil.copytree(SUITES / "tasks", root / "suites" / "tasks")
    shutil.copytree(SUITES / "data", root / "suites" / "data")
    (root / "suites" / "good.yaml").write_text(good_suite(demo), encoding="utf-8")
    pytest.main([str(root / "suites" / "good.yaml"), f"--rootdir={root}", "-q",
                 "-p", "no:cacheprovider", f"--disteval-dir={root / 'base'}"])
    assert (root / "base" / "results" / "suites" / "good" / "good.json").is_file()
    return root / "base"


def run_beside_good(project: pytest.Pytester, demo: Demo, warm: Path,
                    errors: int = 1) -> tuple[pytest.RunResult, Path]:
    write_suite(project, "good", good_suite(demo))
    base = project.path / "base"
    shutil.copytree(warm, base)
    before = files_under(base / "store")
    result = project.runpytest("suites", "--continue-on-collection-errors",
                               f"--disteval-dir={base}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=errors)
    assert files_under(base / "store") == before, "a broken suite reached the store"
    assert sorted(p.name for p in (base / "results" / "suites").iterdir()) == ["good"]
    return result, base


def broken(demo: Demo, *, model_extra: str = "", tasks: str = GOOD_TASKS,
           model_args: str = "") -> str:
    block = model_block("bad", demo.good, extra=model_extra)
    if model_args:
        block = block.replace("dtype: float32}", f"dtype: float32, {model_args}}}")
    return f"disteval: 1\ninclude: [tasks]\nmodels:\n{block}{tasks}"


def expect(result: pytest.RunResult, *lines: str) -> None:
    # fnmatch reads [0] as a character class: [[] is a literal [
    result.stdout.fnmatch_lines([f"*{line.replace('[', '[[]')}*" for line in lines])


# ------------------------------------------------------------------ 1. duplicate keys


def test_a_threshold_written_twice(project: pytest.Pytester, demo: Demo,
                                   warm_store: Path) -> None:
    write_suite(project, "bad", broken(demo, tasks=GOOD_TASKS.replace(
        "    thresholds: {acc: 0.0}\n", "    thresholds:\n      acc: 0.9\n      acc: 0.0\n")))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:14: duplicate key 'acc': written at line 13 and again at "
                   "line 14; keep one")


def test_tasks_written_twice_at_the_top(project: pytest.Pytester, demo: Demo,
                                        warm_store: Path) -> None:
    write_suite(project, "bad", broken(demo) + GOOD_TASKS)
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:13: duplicate key 'tasks': written at line 9 and again")


def test_dtype_written_twice_in_model_args(project: pytest.Pytester, demo: Demo,
                                           warm_store: Path) -> None:
    body = broken(demo).replace("dtype: float32}", "dtype: float32,\n    dtype: float16}")
    write_suite(project, "bad", body)
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:7: duplicate key 'dtype': written at line 6 and again "
                   "at line 7")


def test_a_duplicate_key_in_a_local_task_yaml(project: pytest.Pytester, demo: Demo,
                                              warm_store: Path) -> None:
    tasks = project.path / "suites" / "tasks"
    text = (tasks / "arith_mc.yaml").read_text().replace("task: arith_mc", "task: dup_mc")
    (tasks / "dup_mc.yaml").write_text(text + "output_type: generate_until\n")
    write_suite(project, "bad", broken(demo, tasks=GOOD_TASKS.replace("arith_mc", "dup_mc")))
    result, _ = run_beside_good(project, demo, warm_store)
    line = text.count("\n") + 1
    expect(result, f"suites/bad.yaml:10: tasks[0].task: task 'dup_mc' is defined in "
                   f"{tasks / 'dup_mc.yaml'}:{line}, which cannot be used: duplicate key "
                   f"'output_type': written at line 12 and again at line {line}")


# ------------------------------------------------------------------ 2. non-finite bounds


@pytest.mark.parametrize(("thresholds", "key", "what"), [
    ("{acc: .nan}", "thresholds.acc", "a bound of nan"),
    ("{acc: {max: .inf}}", "thresholds.acc.max", "a bound of inf"),
    ("{acc: {min: -.inf}}", "thresholds.acc.min", "a bound of -inf"),
    ("{acc: {min: 0.1, tolerance: .inf}}", "thresholds.acc.tolerance", "a tolerance of inf"),
])
def test_non_finite_bounds(project: pytest.Pytester, demo: Demo, warm_store: Path,
                           thresholds: str, key: str, what: str) -> None:
    write_suite(project, "bad", broken(demo, tasks=GOOD_TASKS.replace("{acc: 0.0}", thresholds)))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, f"suites/bad.yaml:12: tasks[0].{key}: {what} is not valid: write a finite "
                   "number")


# ------------------------------------------------- issue 15: lm-eval's evaluation keys


def test_bad_evaluation_keys_are_file_line_errors(project: pytest.Pytester, demo: Demo,
                                                  warm_store: Path) -> None:
    # every problem of the suite in one error, each at its line; the good suite still runs
    write_suite(project, "bad", broken(demo, model_extra="""\
        random_seed: "7"
        apply_chat_template: 3
        """, tasks=GOOD_TASKS.replace("    limit: 8\n", "    limit: 8\n"
                                      "    fewshot_as_multiturn: true\n"
                                      "    torch_random_seed: 1.5\n")))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result,
           "suites/bad.yaml:9: models[0].random_seed: '7' is not valid: an integer from 0 to "
           "4294967295 (lm-eval's --random_seed)",
           "suites/bad.yaml:10: models[0].apply_chat_template: 3 is not valid: true, false, or "
           "the name of one of the tokenizer's chat templates",
           "suites/bad.yaml:14: tasks[0].fewshot_as_multiturn: true needs a chat template",
           "suites/bad.yaml:15: tasks[0].torch_random_seed: 1.5 is not valid")


# ------------------------------------------------------------------ 3. alias bombs


BOMB = "".join(
    [f"a0: &a0 [{', '.join(['lol'] * 10)}]\n"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)])


@pytest.mark.parametrize("where", ["model_args", "gen_kwargs"])
def test_an_alias_bomb(project: pytest.Pytester, demo: Demo, warm_store: Path,
                       where: str) -> None:
    # the anchors live under a key the schema does not know: still refused, before the
    # unknown key is even looked at
    if where == "model_args":
        body = broken(demo, model_args="junk: *a8")
    else:
        body = broken(demo, model_extra="gen_kwargs: {until: *a8}\n")
    write_suite(project, "bad", "x-anchors:\n" + textwrap.indent(BOMB, "  ") + body)
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:7: aliases here expand to 1,111,111 nodes or more")


# ------------------------------------------------------------------ 4. one results file


def test_x_yaml_beside_x_yml(project: pytest.Pytester, demo: Demo, warm_store: Path) -> None:
    write_suite(project, "x", broken(demo))
    (project.path / "suites" / "x.yml").write_text(broken(demo), encoding="utf-8")
    result, _ = run_beside_good(project, demo, warm_store, errors=2)
    expect(result, "suites/x.yaml:1: x.yaml and x.yml beside it are both suites: their results "
                   "would share one directory (results/suites/x/)")
    expect(result, "suites/x.yml:1: x.yml and x.yaml beside it are both suites")


# ------------------------------------------------------------------ 5. messages, not tracebacks


@pytest.mark.parametrize(("yaml_text", "line", "words"), [
    ("task: evil\nprocess: !!python/name:os.system\n", 2,
     "the tag '!!python/name:os.system' is not allowed"),
    ("task: evil\ndoc_to_text: [a,\n", 2, "YAML syntax error: in the '[' opened here"),
    ("task: evil\ninclude: gone.yaml\n", 2, "include: 'gone.yaml' does not exist"),
])
def test_a_broken_local_task_yaml(project: pytest.Pytester, demo: Demo, warm_store: Path,
                                  yaml_text: str, line: int, words: str) -> None:
    tasks = project.path / "suites" / "tasks"
    (tasks / "evil.yaml").write_text(yaml_text, encoding="utf-8")
    write_suite(project, "bad", broken(demo, tasks=GOOD_TASKS.replace("arith_mc", "evil")))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, f"suites/bad.yaml:10: tasks[0].task: task 'evil' is defined in "
                   f"{tasks / 'evil.yaml'}:{line}, which cannot be used: {words}")
    assert "Traceback" not in result.stdout.str()


def test_an_unclosed_bracket_in_a_suite(project: pytest.Pytester, demo: Demo,
                                        warm_store: Path) -> None:
    write_suite(project, "bad", broken(demo).replace("thresholds: {acc: 0.0}",
                                                     "thresholds: {acc: 0.0"))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:12: YAML syntax error: in the '{' opened here")


# ------------------------------------------------------------------ 7. Unicode names


def test_unicode_model_and_entry_names_are_accepted(project: pytest.Pytester, demo: Demo,
                                                    warm_store: Path) -> None:
    body = good_suite(demo).replace("  - name: good", "  - name: modèle-ü").replace(
        "  - task: arith_mc\n", "  - task: arith_mc\n    name: 算术\n")
    write_suite(project, "good", body)
    base = project.path / "base"
    shutil.copytree(warm_store, base)
    before = files_under(base / "store")
    result = project.runpytest("suites", f"--disteval-dir={base}", "-p", "no:cacheprovider",
                               "-v")
    result.assert_outcomes(passed=1)
    expect(result, "suites/good.yaml::modèle-ü::算术::acc PASSED")
    # another name of the same model and task: the store's entry is reused, nothing added
    assert files_under(base / "store") == before
    assert (base / "results" / "suites" / "good" / "modèle-ü.json").is_file()


def test_a_decomposed_unicode_name_is_refused(project: pytest.Pytester, demo: Demo,
                                              warm_store: Path) -> None:
    # "e" + combining acute: looks like "modèle" but is another name (and results file)
    write_suite(project, "bad", broken(demo).replace("  - name: bad", "  - name: mode\u0300le"))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:4: models[0].name: 'mode\u0300le' is not a valid name: write "
                   "it in Unicode's composed form (NFC")


# ------------------------------------------------------------------ 6. collection speed


@pytest.mark.parametrize(("entries", "frozen"), [(999, False), (1000, True)])
def test_a_large_suite_is_frozen_out_of_the_gc_after_collection(
        project: pytest.Pytester, demo: Demo, entries: int, frozen: bool) -> None:
    # the GC's full passes over 10,000 items (and those at interpreter exit) cost seconds;
    # a small session keeps its objects collectable
    body = "".join(f"  - {{task: arith_mc, name: e{i}, thresholds: {{acc: 0.5}}}}\n"
                   for i in range(entries))
    write_suite(project, "big", f"disteval: 1\ninclude: [tasks]\nmodels:\n"
                                f"{model_block('good', demo.good)}tasks:\n{body}")
    project.makeconftest("import gc\n"
                         "def pytest_collection_finish(session):\n"
                         "    print('GC', gc.isenabled(), 'FROZEN', gc.get_freeze_count() > 0)\n"
                         "def pytest_sessionfinish(session):\n"
                         "    print('AFTER', gc.isenabled(), gc.get_freeze_count() > 0)\n")
    result = project.runpytest_subprocess("--collect-only", "-q", "suites")
    # during collection the GC is paused; after it, it runs again (on what is not frozen)
    result.stdout.fnmatch_lines(["GC False FROZEN False", f"AFTER True {frozen}",
                                 f"{entries} tests collected*"])


# ------------------------------------------------------------------ 7. code the model writes


def test_an_unsafe_task_without_consent(project: pytest.Pytester, demo: Demo,
                                        warm_store: Path) -> None:
    # lm-eval's humaneval runs the model's code: refused at collection, the good suite runs
    write_suite(project, "bad", broken(demo, tasks=GOOD_TASKS + (
        "  - task: humaneval\n    thresholds: {\"pass@1,create_test\": 0.1}\n")))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:13: tasks[1].task: task 'humaneval' runs code the model "
                   "writes (lm-eval's tasks/humaneval/humaneval.yaml says unsafe_code: true); "
                   "lm-eval runs it only with consent: to run it, add "
                   "'confirm_run_unsafe_code: true' to model 'bad' (models[0], line 4) or to "
                   "this task entry")


def test_a_consent_that_is_not_a_bool(project: pytest.Pytester, demo: Demo,
                                      warm_store: Path) -> None:
    write_suite(project, "bad", broken(demo, model_extra="confirm_run_unsafe_code: 'yes'\n"))
    result, _ = run_beside_good(project, demo, warm_store)
    expect(result, "suites/bad.yaml:9: models[0].confirm_run_unsafe_code: 'yes' is not valid: "
                   "true or false")
