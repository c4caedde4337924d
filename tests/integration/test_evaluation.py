"""Black-box runs of real lm-eval evaluations of the demo models through the plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import Demo
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow

TASKS = """\
tasks:
  - task: arith_mc
    limit: 40
    thresholds:
      acc: 0.9
      acc_norm: {min: 0.8, tolerance: 1}
  - task: arith_gen
    limit: 40
    thresholds:
      exact_match,strict-match: 0.9
"""


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A result store shared by tests that do not examine caching (saves evaluations)."""
    return tmp_path_factory.mktemp("disteval-shared")


def gate_suite(project: pytest.Pytester, demo: Demo) -> Path:
    return write_suite(project, "gate", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                       + model_block("good", demo.good, extra="budgets: {wall_time: 10m}\n")
                       + model_block("weak", demo.weak) + TASKS)


def logs(base: Path) -> list[Path]:
    return sorted((base / "logs").glob("*.log")) if (base / "logs").exists() else []


def test_thresholds_pass_and_fail_with_readable_failures(
        project: pytest.Pytester, demo: Demo, shared_dir: Path) -> None:
    gate_suite(project, demo)
    result = project.runpytest("suites", f"--disteval-dir={shared_dir}", "-rf")
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines([
        "*_ weak::arith_mc::acc _*",
        "arith_mc acc = 0.* ± 0.0* (n=40)",
        "required: acc >= 0.9000",
        "missed by 0.*",
        "model: weak (hf)",
        "defined at: suites/gate.yaml:19",
    ])
    result.stdout.fnmatch_lines([
        "*disteval summary*",
        "model*task*metric*score ± stderr*bound*result*n*seconds*",
        "good*arith_mc*acc *1.0000 ± 0.0000*acc >= 0.9000*PASS*40*",
        "good*(budget)*wall_time*wall_time <= 10.0m*PASS*",
        "weak*arith_gen*exact_match,strict-match*FAIL*40*",
    ])


def test_worker_failure_fails_its_items_and_other_jobs_go_on(
        project: pytest.Pytester, demo: Demo, shared_dir: Path) -> None:
    broken = project.path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    write_suite(project, "crash", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("broken", broken) + model_block("good", demo.good) + TASKS)
    result = project.runpytest("suites", f"--disteval-dir={shared_dir}")
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines([
        "arith_mc acc: no result, the evaluation of model 'broken' failed",
        "worker for model 'broken' failed: *",
        f"command:   {sys.executable} -m pytest_disteval.worker *spec.json",
        "status:    exit code 1",
        "log:       *broken-*.log",
        "last lines of the log:",
        "  | *Error*",
        "defined at: suites/crash.yaml:*",
    ])


def test_k_evaluates_only_the_selected_tasks(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "one", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + TASKS)
    result = project.runpytest("suites", "-k", "arith_mc")
    result.assert_outcomes(passed=2, deselected=1)
    spec = json.loads(next((project.path / ".disteval" / "runs").glob("*/spec.json")).read_text())
    assert [e["task"] for run in spec["runs"] for e in run["entries"]] == ["arith_mc"]
    stored = json.loads((project.path / ".disteval/results/suites/one/good.json").read_text())
    assert set(stored["results"]) == {"arith_mc"}


def test_m_selects_by_model_and_other_models_never_load(
        project: pytest.Pytester, demo: Demo, shared_dir: Path) -> None:
    gate_suite(project, demo)
    base = project.path / "own"
    result = project.runpytest("suites", f"--disteval-dir={base}", "-m",
                               "disteval(model='good') and threshold")
    result.assert_outcomes(passed=3, deselected=4)
    assert [p.name.split("-")[0] for p in logs(base)] == ["good"]


def test_rerun_reuses_results_without_loading_the_model_and_invalidates_on_change(
        project: pytest.Pytester, demo: Demo, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(demo.good, model)
    write_suite(project, "c", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("m", model) + TASKS)
    base = project.path / ".disteval"
    project.runpytest("suites").assert_outcomes(passed=3)
    shutil.rmtree(base / "logs")

    again = project.runpytest("suites")
    again.assert_outcomes(passed=3)
    assert logs(base) == []  # no worker started: the model was not loaded
    again.stdout.fnmatch_lines(["m*arith_mc*acc *PASS*(cached)*"])

    # a task's data file changed: that task is evaluated again, the other is reused
    data = project.path / "suites" / "data" / "arith_test.jsonl"
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    project.runpytest("suites").assert_outcomes(passed=3)
    assert len(logs(base)) == 1
    spec = json.loads(next((base / "runs").glob("*/spec.json")).read_text())
    assert sorted(e["task"] for r in spec["runs"] for e in r["entries"]) == ["arith_gen",
                                                                             "arith_mc"]
    shutil.rmtree(base / "logs")
    project.runpytest("suites").assert_outcomes(passed=3)
    assert logs(base) == []

    # the weights changed (same size, same names): everything is evaluated again
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x01
    weights.write_bytes(bytes(blob))
    project.runpytest("suites").assert_outcomes(passed=3)
    assert len(logs(base)) == 1

    # the cache can be switched off
    shutil.rmtree(base / "logs")
    project.runpytest("suites", "--disteval-no-cache").assert_outcomes(passed=3)
    assert len(logs(base)) == 1


def test_a_hanging_worker_is_killed_at_the_timeout(project: pytest.Pytester, demo: Demo) -> None:
    write_suite(project, "slow", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good, extra="timeout: 1s\n") + TASKS)
    result = project.runpytest("suites")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["worker killed after the job timeout of 1s",
                                 "status:    killed after timeout"])


def test_a_bad_suite_is_one_collection_error_and_other_suites_run(
        project: pytest.Pytester, demo: Demo, shared_dir: Path) -> None:
    gate_suite(project, demo)
    write_suite(project, "broken", "disteval: 1\nmodels:\n  - backend: hf\n    modle_args: {}\n")
    (project.path / ".gitlab-ci.yml").write_text("stages: [test]\n")
    result = project.runpytest(f"--disteval-dir={shared_dir}", "-m", "disteval(model='good')")
    result.assert_outcomes(passed=4, deselected=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR collecting suites/broken.yaml*",
        "invalid suite:",
        "suites/broken.yaml:3: models?0?.model_args: required: *",
        "suites/broken.yaml:4: models?0?.modle_args: unknown key (did you mean 'model_args'?)*",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "gitlab" not in result.stdout.str()


def test_junit_xml_carries_properties_and_parses(
        project: pytest.Pytester, demo: Demo, shared_dir: Path) -> None:
    junitparser = pytest.importorskip("junitparser")
    gate_suite(project, demo)
    for family in ("xunit2", "xunit1"):
        xml = project.path / f"{family}.xml"
        project.runpytest("suites", f"--disteval-dir={shared_dir}", f"--junitxml={xml}",
                          "-o", f"junit_family={family}").assert_outcomes(passed=4, failed=3)
        cases = {(c.classname, c.name): c for suite in junitparser.JUnitXml.fromfile(str(xml))
                 for c in suite}
        case = cases[("suites.gate.yaml.good.arith_mc", "acc")]
        props = {p.name: p.value for p in case.child(junitparser.Properties)}
        assert float(props["score"]) == 1.0
        assert float(props["stderr"]) == 0.0
        assert props["bound"] == "acc >= 0.9000"
        assert props["n_samples"] == "40"
        assert float(props["wall_time_s"]) > 0
        assert props["metric"] == "acc,none" and props["model"] == "good"
        weak = cases[("suites.gate.yaml.weak.arith_mc", "acc")]
        assert not weak.is_passed and "missed by" in weak.result[0].text


def test_python_api_fixture_shares_the_store(project: pytest.Pytester, demo: Demo,
                                             shared_dir: Path) -> None:
    project.makepyfile(test_api=f"""
        def run(disteval, path, limit):
            return disteval.evaluate(
                model={{"name": "m", "backend": "hf", "device": "cpu", "batch_size": 64,
                        "model_args": {{"pretrained": path, "dtype": "float32"}}}},
                tasks=["arith_mc"], include=["suites/tasks"], workdir="suites", limit=limit)

        def test_good_model(disteval):
            good = run(disteval, "{demo.good}", 40)
            score = good.score("arith_mc", "acc")
            assert score.value >= 0.9 and score.n == 40
            assert good.results["results"]["arith_mc"]["acc,none"] == score.value

        def test_other_configurations_are_other_jobs(disteval):
            weak = run(disteval, "{demo.weak}", 20)
            assert weak.score("arith_mc", "acc").value < 0.5
            assert weak.score("arith_mc", "acc").n == 20
    """)
    project.runpytest(f"--disteval-dir={shared_dir}").assert_outcomes(passed=2)


def worker_starts(base: Path) -> list[dict[str, object]]:
    path = base / "workers.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "start"]


def test_xdist_runs_each_job_once(project: pytest.Pytester, demo: Demo) -> None:
    pytest.importorskip("xdist")
    gate_suite(project, demo)
    project.makepyfile(test_plain="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = project.runpytest_subprocess("-n", "2", "-p", "xdist", "--disteval-no-cache")
    result.assert_outcomes(passed=6, failed=3)
    jobs = sorted(str(r["job"]) for r in worker_starts(project.path / ".disteval"))
    assert jobs == ["suites/gate.yaml::good", "suites/gate.yaml::weak"]


def test_a_budget_alone_evaluates_its_whole_job(project: pytest.Pytester, demo: Demo,
                                                shared_dir: Path) -> None:
    gate_suite(project, demo)
    base = project.path / "own"
    result = project.runpytest("suites", f"--disteval-dir={base}", "-m", "budget")
    result.assert_outcomes(passed=1, deselected=6)
    result.stdout.fnmatch_lines(["good*(budget)*wall_time*wall_time <= 10.0m*PASS*"])
    spec = json.loads(next((base / "runs").glob("*/spec.json")).read_text())
    assert sorted(e["task"] for r in spec["runs"] for e in r["entries"]) == ["arith_gen",
                                                                             "arith_mc"]
