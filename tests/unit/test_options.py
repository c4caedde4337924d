"""The options table: names, precedence, where a bad value came from, --help, the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_disteval.options import OPTIONS, Option, read
from pytest_disteval.settings import resolve
from pytest_disteval.state import SETTINGS

ROOT = Path(__file__).resolve().parents[2]

# the public names: users' command lines, ini files and CI environments spell them so
NAMES = {
    "--disteval-dir": ("disteval_dir", "DISTEVAL_DIR"),
    "--disteval-cache": ("disteval_cache", "DISTEVAL_CACHE"),
    "--disteval-clear-cache": (None, None),
    "--disteval-timeout": ("disteval_timeout", "DISTEVAL_TIMEOUT"),
    "--gpus": ("disteval_gpus", "DISTEVAL_GPUS"),
    "--gpu-ids": ("disteval_gpu_ids", "DISTEVAL_GPU_IDS"),
    "--tp": ("disteval_tp", "DISTEVAL_TP"),
    "--pp": ("disteval_pp", "DISTEVAL_PP"),
    "--dp": ("disteval_dp", "DISTEVAL_DP"),
    "--disteval-pack": ("disteval_pack", "DISTEVAL_PACK"),
    "--disteval-plan": (None, None),
    "--disteval-fake-gpus": (None, None),
    "--disteval-doctor": (None, None),
    "--disteval-limit": ("disteval_limit", "DISTEVAL_LIMIT"),
    "--disteval-limit-seed": ("disteval_limit_seed", "DISTEVAL_LIMIT_SEED"),
    "--disteval-dtype": ("disteval_dtype", "DISTEVAL_DTYPE"),
    "--disteval-batch-size": ("disteval_batch_size", "DISTEVAL_BATCH_SIZE"),
    "--disteval-model-args": ("disteval_model_args", "DISTEVAL_MODEL_ARGS"),
    "--disteval-apply-chat-template": ("disteval_apply_chat_template",
                                       "DISTEVAL_APPLY_CHAT_TEMPLATE"),
    "--disteval-system-instruction": ("disteval_system_instruction",
                                      "DISTEVAL_SYSTEM_INSTRUCTION"),
    "--disteval-executor": ("disteval_executor", "DISTEVAL_EXECUTOR"),
    "--disteval-worker-start": ("disteval_worker_start", "DISTEVAL_WORKER_START"),
    "--ray-address": ("disteval_ray_address", "RAY_ADDRESS"),
    "--disteval-baseline": ("disteval_baseline", "DISTEVAL_BASELINE"),
    "--disteval-save-baseline": ("disteval_save_baseline", "DISTEVAL_SAVE_BASELINE"),
    "--disteval-alpha": ("disteval_alpha", "DISTEVAL_ALPHA"),
    "--disteval-json": ("disteval_json", "DISTEVAL_JSON"),
    "--disteval-md": ("disteval_md", "DISTEVAL_MD"),
    "--disteval-html": ("disteval_html", "DISTEVAL_HTML"),
    "--disteval-samples": ("disteval_samples", "DISTEVAL_SAMPLES"),
    "--disteval-predict-only": (None, None),
    "--disteval-rescore": (None, None),
    "--disteval-progress": ("disteval_progress", "DISTEVAL_PROGRESS"),
}

# a valid value per option that has an ini key, as a user writes it
SAMPLES = {
    "dir": "out", "cache": "false", "timeout": "30m", "gpus": "0", "gpu_ids": "0,1",
    "tp": "2", "pp": "2", "dp": "3", "pack": "2", "limit": "7", "limit_seed": "1",
    "dtype": "bfloat16",
    "batch_size": "auto:4", "model_args": "max_model_len=512", "executor": "local",
    "worker_start": "subprocess", "ray_address": "auto", "baseline": "base.json",
    "save_baseline": "new.json", "alpha": "0.01", "json": "off", "md": "r.md",
    "html": "r.html", "progress": "off", "apply_chat_template": "chatml",
    "system_instruction": "Answer briefly.", "samples": "false",
}
WITH_INI = [o for o in OPTIONS if o.ini is not None]


def test_every_flag_ini_key_and_environment_variable_keeps_its_name() -> None:
    assert {o.flag: (o.ini, o.env) for o in OPTIONS} == NAMES
    assert [o.off_flag for o in OPTIONS if o.off_flag] == ["--disteval-no-cache",
                                                           "--disteval-no-samples"]
    assert set(SAMPLES) == {o.name for o in WITH_INI}


@pytest.mark.parametrize("option", WITH_INI, ids=lambda o: o.flag)
def test_command_line_over_ini_over_environment(pytester: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch,
                                                option: Option) -> None:
    value = SAMPLES[option.name]
    assert option.ini is not None and option.env is not None
    pytester.makeini(f"[pytest]\n{option.ini} = {value}\n")
    monkeypatch.setenv(option.env, value)
    # a flag takes no value: the sample "false" is its off flag
    flag = option.off_flag if option.metavar is None else option.flag
    arg = flag if option.metavar is None else f"{flag}={value}"
    assert read(pytester.parseconfig(arg), option)[1] == flag
    assert read(pytester.parseconfig(), option)[1] == f"ini option {option.ini!r}"
    pytester.makeini("[pytest]\n")
    assert read(pytester.parseconfig(), option)[1] == f"environment variable {option.env}"
    monkeypatch.delenv(option.env)
    got, where = read(pytester.parseconfig(), option)
    assert where == "default"
    assert got == (None if option.default is None else option.parse(option.default, "x"))


def test_the_environment_reaches_every_setting(pytester: pytest.Pytester,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for option in WITH_INI:
        assert option.env is not None
        monkeypatch.setenv(option.env, SAMPLES[option.name])
    monkeypatch.delenv("DISTEVAL_SAVE_BASELINE")  # not with a limit (checked below)
    # resolved without configuring: the baseline plugin would read base.json
    settings = resolve(pytester.parseconfig())
    start = pytester.path
    assert settings.base_dir == start / "out"
    assert (settings.use_cache, settings.timeout) == (False, 1800.0)
    gpu = settings.gpu
    assert (gpu.gpus, gpu.gpu_ids, gpu.tp, gpu.pp, gpu.dp, gpu.pack) == (0, (0, 1), 2, 2, 3, 2)
    ov = settings.overrides
    assert (ov.limit, ov.limit_seed, ov.dtype, ov.batch_size, ov.model_args) == (
        7, 1, "bfloat16", "auto:4", (("max_model_len", 512),))
    assert (settings.executor, settings.worker_start, settings.ray_address) == (
        "local", "subprocess", "auto")
    assert (settings.baseline, settings.save_baseline, settings.alpha) == (
        start / "base.json", None, 0.01)
    assert settings.export_samples is False  # the sample: "false"
    reports = settings.reports
    assert (reports.json_path, reports.md_path, reports.html_path, reports.progress) == (
        None, start / "r.md", start / "r.html", "off")
    monkeypatch.setenv("DISTEVAL_SAVE_BASELINE", SAMPLES["save_baseline"])
    monkeypatch.delenv("DISTEVAL_LIMIT")
    with pytest.raises(pytest.UsageError, match="DISTEVAL_LIMIT_SEED 1 draws --disteval-limit N"):
        resolve(pytester.parseconfig())  # a seed draws a limit's documents: none, no seed
    monkeypatch.delenv("DISTEVAL_LIMIT_SEED")
    assert resolve(pytester.parseconfig()).save_baseline == start / "new.json"


def test_the_defaults(pytester: pytest.Pytester) -> None:
    settings = pytester.parseconfigure().stash[SETTINGS]
    assert settings.base_dir == pytester.path / ".disteval"
    assert (settings.use_cache, settings.clear_cache, settings.plan_only, settings.doctor) == (
        True, False, False, False)
    assert (settings.timeout, settings.executor, settings.worker_start, settings.alpha) == (
        7200.0, "local", "auto", 0.05)
    assert settings.reports.json_path == settings.base_dir / "report.json"
    assert not settings.reports.json_asked
    assert (settings.gpu.gpus, settings.gpu.pack, settings.overrides.limit) == (None, 1, None)


@pytest.mark.parametrize(("source", "message"), [
    ("--gpus=many", "--gpus: 'many' is not valid: a whole number >= 0 or 'all'"),
    ("ini:disteval_cache = maybe", "ini option 'disteval_cache': invalid truth value 'maybe'; "
                                   "valid: true or false"),
    ("ini:disteval_gpu_ids = 0;1", "ini option 'disteval_gpu_ids': '0;1' is not valid: "
                                   "comma-separated GPU indices such as 0,1,2,3"),
    ("env:DISTEVAL_CACHE=maybe", "environment variable DISTEVAL_CACHE: 'maybe' is not a "
                                 "boolean (true/false)"),
    ("env:DISTEVAL_ALPHA=1", "environment variable DISTEVAL_ALPHA: '1' is not valid: a "
                             "significance level between 0 and 1, e.g. 0.05"),
    ("--disteval-fake-gpus=8xlots", "--disteval-fake-gpus: "),
])
def test_a_bad_value_names_where_it_came_from(pytester: pytest.Pytester,
                                              monkeypatch: pytest.MonkeyPatch,
                                              source: str, message: str) -> None:
    args = []
    if source.startswith("ini:"):
        pytester.makeini(f"[pytest]\n{source[4:]}\n")
    elif source.startswith("env:"):
        monkeypatch.setenv(*source[4:].split("=", 1))
    else:
        args.append(source)
    with pytest.raises(pytest.UsageError) as info:
        pytester.parseconfigure(*args)
    assert str(info.value).startswith(message)


def test_options_that_only_together_are_wrong(pytester: pytest.Pytester) -> None:
    with pytest.raises(pytest.UsageError, match="^--disteval-save-baseline cannot be combined "
                                                "with --disteval-limit 5: a baseline records"):
        pytester.parseconfigure("--disteval-save-baseline=b.json", "--disteval-limit=5")
    with pytest.raises(pytest.UsageError, match="^--disteval-predict-only and --disteval-rescore "
                                                "exclude each other"):
        pytester.parseconfigure("--disteval-predict-only", "--disteval-rescore")
    with pytest.raises(pytest.UsageError, match="^--disteval-rescore needs the result store: "
                                                "drop --disteval-no-cache"):
        pytester.parseconfigure("--disteval-rescore", "--disteval-no-cache")


def test_report_paths_are_anchored_as_junitxml_anchors_them(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndisteval_md = out/r.md\n")
    sub = pytester.mkdir("sub")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        settings = pytester.parseconfigure("--disteval-json=r.json",
                                           "--disteval-no-cache").stash[SETTINGS]
    assert settings.reports.json_path == sub / "r.json"  # where pytest was started
    assert settings.reports.json_asked
    assert settings.reports.md_path == pytester.path / "out" / "r.md"  # the rootdir
    assert settings.use_cache is False


def test_help_shows_the_ini_booleans_and_names_the_environment_variables(
        pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["  disteval_cache (bool):*", "  disteval_timeout (string):*"])
    text = " ".join(result.stdout.str().split())  # --help wraps lines
    for option in OPTIONS:
        # pytest's style: capitalised, one phrase without a final period
        assert option.help[0].isupper() and not option.help.endswith("."), option.flag
        if option.env is not None:
            assert f"env: {option.env})" in option.full_help
            assert " ".join(option.full_help.split()) in text, option.flag
    assert "Reuse stored results whose key matches (default: true; env: DISTEVAL_CACHE)" in text
    assert "(default: 2h; env: DISTEVAL_TIMEOUT)" in text


def test_the_docs_name_every_flag_ini_key_and_variable() -> None:
    docs = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    missing = [name for o in OPTIONS for name in (o.flag, o.off_flag, o.ini, o.env)
               if name is not None and f"`{name}" not in docs]
    assert missing == []
