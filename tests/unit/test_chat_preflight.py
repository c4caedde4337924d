"""The chat template preflight (preflight/chat.py) on copies of the demo tokenizer's files."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.preflight.chat import chat, read_tokenizer, writes_bos
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check
from pytest_disteval.suite import overrides
from pytest_disteval.suite.parse import parse_suite

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def model_dir(tmp_path: Path, **config: Any) -> Path:
    """The demo tokenizer's files (no weights: the check reads only these) with ``config``."""
    path = tmp_path / "model"
    path.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(ROOT / "demo/models/tiny-arith" / name, path)
    data = json.loads((path / "tokenizer_config.json").read_text())
    data.update(config)
    (path / "tokenizer_config.json").write_text(json.dumps(data))
    return path


def checks(tmp_path: Path, path: Path, model: str = "", entry: str = "",
           args: str = "", template: str | None = None) -> list[Check]:
    """The chat checks of a one-entry suite; ``template``: --disteval-apply-chat-template."""
    text = f"""\
disteval: 1
models:
  - name: m
    backend: hf
    model_args: {{pretrained: {path}{args}}}
{textwrap.indent(model, '    ')}
tasks:
  - task: t
    thresholds: {{acc: 0}}
{textwrap.indent(entry, '    ')}
"""
    suite = parse_suite(text, tmp_path / "s.yaml")
    if template is not None:
        overrides.apply(suite, overrides.Overrides(apply_chat_template=template))
    job = EvalJob(suite.models[0], suite, list(suite.models[0].tasks))
    return chat([job])


def one(found: list[Check]) -> Check:
    assert len(found) == 1, found
    return found[0]


def test_an_instruct_model_without_its_template_is_warned_with_the_fix(tmp_path: Path) -> None:
    check = one(checks(tmp_path, model_dir(tmp_path, chat_template=TEMPLATE)))
    assert check.status == WARN
    assert "has a chat template (an instruct or chat model) but entries t run without it" \
        in check.detail
    assert "apply_chat_template: true" in check.fix
    assert "--disteval-apply-chat-template true" in check.fix


def test_plain_prompts_said_on_purpose_pass(tmp_path: Path) -> None:
    path = model_dir(tmp_path, chat_template=TEMPLATE)
    assert one(checks(tmp_path, path, model="apply_chat_template: false")).status == PASS
    assert one(checks(tmp_path, path, entry="apply_chat_template: true")).status == PASS


def test_a_template_asked_of_a_tokenizer_without_one_fails(tmp_path: Path) -> None:
    check = one(checks(tmp_path, model_dir(tmp_path), model="apply_chat_template: true"))
    assert check.status == FAIL
    assert "has no chat template" in check.detail
    # a base model with no template asked passes
    other = tmp_path / "o"
    other.mkdir()
    assert one(checks(other, model_dir(other))).status == PASS


def test_a_template_name_the_tokenizer_lacks_fails(tmp_path: Path) -> None:
    named = [{"name": "default", "template": TEMPLATE}, {"name": "tool_use", "template": "x"}]
    path = model_dir(tmp_path, chat_template=named)
    assert one(checks(tmp_path, path, entry="apply_chat_template: tool_use")).status == PASS
    # a name the suite writes is refused at collection (below); one given on the command
    # line reaches the preflight
    check = one(checks(tmp_path, path, template="rag"))
    assert check.status == FAIL
    assert "no template of that name (it has: default, tool_use)" in check.detail


def test_a_doubled_bos_is_warned_with_the_fix(tmp_path: Path) -> None:
    path = model_dir(tmp_path, chat_template="{{- bos_token }}" + TEMPLATE,
                     add_bos_token=True)
    check = one(checks(tmp_path, path, model="apply_chat_template: true"))
    assert check.status == WARN
    assert "starts with the BOS token '<bos>'" in check.detail
    assert "add_bos_token: false" in check.fix
    # the fix of the message applied: nothing to say
    told = checks(tmp_path, path, model="apply_chat_template: true",
                  args=", add_bos_token: false")
    assert one(told).status == PASS
    clean = tmp_path / "c"
    clean.mkdir()
    ok = model_dir(clean, chat_template="{{- bos_token }}" + TEMPLATE, add_bos_token=False)
    assert one(checks(clean, ok, model="apply_chat_template: true")).status == PASS


@pytest.mark.parametrize(("template", "bos", "expected"), [
    ("{{ bos_token }}{% for m in messages %}", "<s>", True),
    ("{%- set x = 1 -%}{{- bos_token -}}hi", "<s>", True),
    ("<s>[INST]", "<s>", True),
    ("{% for m in messages %}{{ bos_token + '[INST] ' }}", "<s>", True),
    ("{% for m in messages %}{{ m['content'] }}{{ bos_token }}", "<s>", False),
    ("[INST]", None, False),
])
def test_writes_bos(template: str, bos: str | None, expected: bool) -> None:
    assert writes_bos(template, bos) is expected


def test_the_template_in_a_file_of_its_own_counts(tmp_path: Path) -> None:
    path = model_dir(tmp_path)
    (path / "chat_template.jinja").write_text(TEMPLATE)
    tok = read_tokenizer(path)
    assert tok is not None and tok.templates == {"default": TEMPLATE}
    # the demo tokenizer adds no BOS (no add_bos_token, no post-processor)
    assert tok.adds_bos is False


def test_the_doctor_and_the_gpu_preflight_run_it(tmp_path: Path) -> None:
    from test_doctor import scheduler

    from pytest_disteval.preflight import Doctor

    path = model_dir(tmp_path, chat_template=TEMPLATE)
    # the weights' files too: the models check passes, the chat check has its say
    sched = scheduler(tmp_path, model=f"{{pretrained: {path}, dtype: float32}}", gpus=0)
    for preflight in (False, True):
        found = [c for c in Doctor(sched, free_bytes=lambda p: 2**40,
                                   preflight=preflight).run()
                 if c.name.startswith("chat template")]
        assert [c.status for c in found] == [WARN], found


def test_a_template_name_the_local_tokenizer_lacks_is_a_collection_error(
        tmp_path: Path) -> None:
    from pytest_disteval.suite.model import SuiteError

    named = [{"name": "default", "template": TEMPLATE}, {"name": "tool_use", "template": "x"}]
    path = model_dir(tmp_path, chat_template=named)
    checks(tmp_path, path, entry="apply_chat_template: tool_use")  # a name it has: fine
    with pytest.raises(SuiteError) as info:
        checks(tmp_path, path, model="apply_chat_template: rag")
    assert str(info.value) == (
        f"{tmp_path}/s.yaml:6: models[0].apply_chat_template: 'rag': the tokenizer in {path} "
        "has no chat template named 'rag'; write one of: default, tool_use")
    with pytest.raises(SuiteError) as info:
        checks(tmp_path, path, entry="apply_chat_template: rag")
    assert str(info.value).startswith(f"{tmp_path}/s.yaml:10: tasks[0].apply_chat_template: "
                                      "'rag': the tokenizer in")
