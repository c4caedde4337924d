"""--disteval-doctor and the preflight of GPU runs, black-box through pytester.

No lm-eval run here: the point is that nothing is loaded. GPUs come from a fake
inventory (--disteval-fake-gpus) or a fake pynvml module; the last test is for a
real GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_disteval.gpu.inventory import NoGPUError, NvmlInventory
from pytest_disteval.preflight import EXIT_PREFLIGHT

from conftest import Demo
from helpers import model_block, write_suite

HUB_MODEL = """\
  - name: hubby
    backend: hf
    model_args: {pretrained: nobody-here/no-such-model, dtype: float32}
"""


def suite(project: pytest.Pytester, models: str) -> None:
    write_suite(project, "s", "disteval: 1\ninclude: [tasks]\nmodels:\n" + models
                + "tasks:\n  - task: arith_mc\n    thresholds: {acc: 0.9}\n")


def nothing_ran(base: Path) -> bool:
    return not (base / "runs").exists() and not (base / "workers.jsonl").exists()


def test_doctor_prints_the_checks_and_runs_nothing(project: pytest.Pytester,
                                                   demo: Demo) -> None:
    suite(project, model_block("good", demo.good))
    base = project.path / ".disteval"
    result = project.runpytest_subprocess("suites", "--disteval-doctor")
    result.stdout.fnmatch_lines([
        "*= disteval doctor =*",
        "PASS  gpus * models run on the CPU*",
        "PASS  backend lm-eval * lm-eval 0.4.*",
        "PASS  backend hf * transformers *",
        "PASS  plan suites/s.yaml::good * tp=1 pp=1 dp=1 on CPU",
        "PASS  offline * workers run with HF_HUB_OFFLINE=1*",
        "PASS  model suites/s.yaml::good * local path *tiny-arith",
        "PASS  dataset arith_mc * local data files: data/arith_train.jsonl*",
        "* passed, 0 warnings, 0 failed",
    ])
    assert result.ret == 0 and nothing_ran(base)
    assert "passed in" not in result.stdout.str()  # no item ran
    # with -n the doctor still runs here, and distributes nothing
    result = project.runpytest_subprocess("suites", "--disteval-doctor", "-n", "2")
    result.stdout.fnmatch_lines(["*= disteval doctor =*", "* passed, 0 warnings, 0 failed"])
    assert result.ret == 0 and "created:" not in result.stdout.str()

    suite(project, HUB_MODEL)
    result = project.runpytest_subprocess("suites", "--disteval-doctor")
    result.stdout.fnmatch_lines([
        "FAIL  model suites/s.yaml::hubby *'nobody-here/no-such-model' is neither a local "
        "path nor in the HF cache*",
        "* fix: where there is network: hf download nobody-here/no-such-model*",
        "* 1 failed",
    ])
    assert result.ret == 1 and nothing_ran(base)


def test_a_failing_check_stops_a_gpu_run_before_any_worker(project: pytest.Pytester,
                                                           demo: Demo) -> None:
    suite(project, model_block("good", demo.good) + HUB_MODEL)
    base = project.path / ".disteval"
    result = project.runpytest_subprocess("suites", "--disteval-fake-gpus", "2x80GiB")
    assert result.ret == EXIT_PREFLIGHT
    result.stdout.fnmatch_lines([
        "*- disteval preflight: * passed, 0 warnings, 1 failed -*",
        "FAIL  model suites/s.yaml::hubby *",
        "*fix: where there is network*",
    ])
    result.stdout.fnmatch_lines(["*Exit: disteval preflight: 1 check(s) failed (model "
                                 "suites/s.yaml::hubby); no model was loaded*"])
    assert nothing_ran(base)  # not even the good model's worker started
    # under xdist a worker cannot stop the session: its jobs fail with the check instead
    result = project.runpytest_subprocess("suites", "--disteval-fake-gpus", "2x80GiB",
                                          "-n", "2")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*disteval preflight: 1 check(s) failed (model "
                                 "suites/s.yaml::hubby); no model was loaded*"])
    assert nothing_ran(base)
    # a CPU run does not check (nothing loads on a GPU); the good model runs there
    result = project.runpytest_subprocess("suites", "--gpus", "0", "-k", "good",
                                          "--collect-only", "-q")
    assert result.ret == 0 and "preflight" not in result.stdout.str()


def test_the_preflight_reads_gpus_through_the_nvml_interface(
        project: pytest.Pytester, demo: Demo, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    try:
        from test_doctor import DriverNvml
    finally:
        sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "pynvml", DriverNvml(count=4))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    suite(project, model_block("good", demo.good).replace("    device: cpu\n", ""))
    base = project.path / ".disteval"
    result = project.runpytest("suites", "--gpus", "8")  # in-process: the fake NVML serves
    assert result.ret == EXIT_PREFLIGHT
    result.stdout.fnmatch_lines([
        "FAIL  gpus * --gpus 8 asks for more GPUs than the 4 available*",
        "* fix: ask for at most 4 GPUs*",
    ])
    assert nothing_ran(base)
    result = project.runpytest("suites", "--gpus", "2", "--disteval-doctor")
    result.stdout.fnmatch_lines([
        "PASS  gpus * 2 of 4 visible GPUs used (--gpus 2; NVIDIA H100 80GB HBM3)",
        "PASS  driver * driver 550.54.15, supports CUDA 12.4*",
        "*  nccl *",  # this venv's torch has no NCCL: the check says so either way
    ])


def _real_gpus() -> bool:
    try:
        return bool(NvmlInventory().gpus())
    except (NoGPUError, ImportError, RuntimeError):
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpus(), reason="no GPU visible to NVML")
def test_doctor_on_a_real_gpu_machine(project: pytest.Pytester, demo: Demo) -> None:
    suite(project, model_block("good", demo.good).replace("    device: cpu\n", ""))
    result = project.runpytest_subprocess("suites", "--disteval-doctor", "--gpus", "1")
    result.stdout.fnmatch_lines([
        "PASS  gpus * 1 of * visible GPUs used (--gpus 1;*",
        "PASS  driver * driver *, supports CUDA *; torch * built for CUDA *",
        "PASS  nccl * NCCL 2.*",
        "PASS  interconnect * one GPU per group*",
    ])
    assert result.ret == 0


def test_an_instruct_model_without_its_template_is_flagged(project: pytest.Pytester,
                                                          demo: Demo, tmp_path: Path) -> None:
    import json
    import shutil

    model = tmp_path / "chat"
    shutil.copytree(demo.good, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    suite(project, model_block("chat", model))
    result = project.runpytest("suites", "--disteval-doctor")
    result.stdout.fnmatch_lines([
        "WARN  chat template suites/s.yaml::chat * has a chat template (an instruct or chat "
        "model) but entries arith_mc run without it*",
        "* fix: set apply_chat_template: true on the model*"])
    assert nothing_ran(project.path / ".disteval")
