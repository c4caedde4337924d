"""--disteval-predict-only stores responses, --disteval-rescore scores them without a model."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import Demo
from helpers import DP_TASKS, model_block, write_suite

pytestmark = pytest.mark.slow


def scores(base: Path) -> dict[str, object]:
    data = json.loads((base / "results" / "suites" / "rs" / "weak.json").read_text())
    return {task: data["results"][task] for task in ("arith_mc", "arith_gen")}


def starts(base: Path) -> list[dict[str, object]]:
    lines = (base / "workers.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "start"]


@pytest.mark.parametrize("dp", [1, 2])
def test_predict_only_then_rescore_gives_a_plain_runs_scores_without_a_model(
        project: pytest.Pytester, demo: Demo, dp: int) -> None:
    # the untrained model: scores away from 0 and 1, so a wrong replay would show
    write_suite(project, "rs", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("weak", demo.weak) + DP_TASKS)
    plain, base = project.path / "plain", project.path / "pr"
    project.runpytest("suites", f"--disteval-dir={plain}").assert_outcomes(passed=2)

    # nothing stored yet: rescoring says what to run first
    run = project.runpytest("suites", f"--disteval-dir={base}", "--disteval-rescore")
    run.assert_outcomes(failed=2)
    run.stdout.fnmatch_lines(["*--disteval-rescore: no responses are stored for model "
                              "'weak'*run it with --disteval-predict-only first*"])

    # at dp 2 the shards predict side by side and no scoring worker starts
    run = project.runpytest("suites", f"--disteval-dir={base}", "--disteval-predict-only",
                            "--gpus", "0", "--dp", str(dp), "-rs")
    run.assert_outcomes(skipped=2)
    run.stdout.fnmatch_lines(["SKIPPED * predicted only (--disteval-predict-only): the "
                              "responses are in *.sqlite; score them with --disteval-rescore"])
    assert not (base / "results").exists()  # no score anywhere
    (store,) = (base / "store" / "responses").glob("*.sqlite")
    with sqlite3.connect(store) as db:
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM responses GROUP BY kind"))
    assert kinds["loglikelihood"] > 0 and kinds["generate_until"] > 0
    assert [r["mode"] for r in starts(base)] == ["shard"] * dp

    run = project.runpytest("suites", f"--disteval-dir={base}", "--disteval-rescore")
    run.assert_outcomes(passed=2)
    assert scores(base) == scores(plain)
    # the rescore started one worker, the scoring one, which loaded no model
    (score,) = starts(base)[dp:]
    assert score["mode"] == "score" and score["gpus"] == []
    (log,) = (base / "logs").glob("*-score.log")
    text = log.read_text()
    assert "stored arith_mc" in text and "model loaded" not in text
    record = json.loads((base / "results" / "suites" / "rs" / "weak.json").read_text())
    assert record["config"]["disteval"]["job"]["load_s"] < 1.0

    # a filter added to the task: rescored from the same responses, still no model
    task = project.path / "suites" / "tasks" / "arith_gen.yaml"
    task.write_text(task.read_text().replace("metadata:\n", """\
  - name: "first-digit"
    filter:
      - function: "regex"
        regex_pattern: "([0-9])"
      - function: "take_first"
metadata:
""", 1))
    run = project.runpytest("suites", f"--disteval-dir={base}", "--disteval-rescore")
    run.assert_outcomes(passed=2)
    rescored = scores(base)["arith_gen"]
    assert isinstance(rescored, dict) and "exact_match,first-digit" in rescored
    assert rescored["exact_match,strict-match"] == scores(plain)["arith_gen"][  # type: ignore[index]
        "exact_match,strict-match"]
    assert [r["mode"] for r in starts(base)] == ["shard"] * dp + ["score", "score"]
