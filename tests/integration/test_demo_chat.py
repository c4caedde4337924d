"""The demo chat model: tiny-arith's weights with a real chat template in its tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import DEMO_MODELS, SUITES

pytestmark = pytest.mark.slow

CHAT = DEMO_MODELS / "tiny-arith-chat"

# in a process of its own: the pytest process never imports transformers or lm-eval
SCRIPT = """
import json, sys
from transformers import AutoTokenizer
import lm_eval
from lm_eval.tasks import TaskManager
chat, plain, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(chat)
shots = [{"role": "user", "content": "23+14="}, {"role": "assistant", "content": "37"},
         {"role": "user", "content": "7+33="}, {"role": "assistant", "content": "40"},
         {"role": "user", "content": "38+4="}]
report = {
    "rendered": tok.apply_chat_template(shots, tokenize=False, add_generation_prompt=True),
    "system": tok.apply_chat_template([{"role": "system", "content": "0"}, shots[-1]],
                                      tokenize=False, add_generation_prompt=True),
    "plain_template": AutoTokenizer.from_pretrained(plain).chat_template,
    "runs": {},
}
manager = TaskManager(include_path="tasks", include_defaults=False)
for chat_on in (False, True):
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": chat, "dtype": "float32"},
        tasks=["arith_mc", "arith_gen"], num_fewshot=2, limit=10, device="cpu", batch_size=64,
        task_manager=manager, log_samples=True, apply_chat_template=chat_on,
        fewshot_as_multiturn=chat_on)
    report["runs"][str(chat_on)] = {
        "results": results["results"],
        "prompts": {t: [s["arguments"][0][0] for s in results["samples"][t]]
                    for t in ("arith_mc", "arith_gen")},
    }
json.dump(report, open(out, "w"), default=str)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chat") / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", SCRIPT, str(CHAT), str(DEMO_MODELS / "tiny-arith"),
                    str(out)], cwd=SUITES, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_it_shares_tiny_arith_s_weights_and_only_its_tokenizer_config_differs() -> None:
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (CHAT / name).resolve() == (DEMO_MODELS / "tiny-arith" / name).resolve()
    config = json.loads((CHAT / "tokenizer_config.json").read_text())
    plain = json.loads((DEMO_MODELS / "tiny-arith" / "tokenizer_config.json").read_text())
    assert {k: v for k, v in config.items() if k != "chat_template"} == plain
    assert "chat_template" in config and "chat_template" not in plain


def test_the_template_renders_a_multi_turn_few_shot_prompt_in_the_trained_format(
        report: dict[str, Any]) -> None:
    assert report["rendered"] == "<bos>23+14= 37\n\n7+33= 40\n\n38+4="
    assert report["system"] == "<bos>0\n\n38+4="
    assert report["plain_template"] is None  # tiny-arith itself has none


def test_lm_eval_uses_the_template_when_asked_and_scores_differ(report: dict[str, Any]) -> None:
    plain, chat = report["runs"]["False"], report["runs"]["True"]
    # the same documents, the same 2-shot examples: only the template tells them apart
    for task in ("arith_mc", "arith_gen"):
        for without, with_template in zip(plain["prompts"][task], chat["prompts"][task],
                                          strict=True):
            assert not without.startswith("<bos>")
            assert with_template == "<bos>" + without
    # generation still adds; multiple choice under a template loses lm-eval's target
    # delimiter (" 42" is scored as "42"), which this model never saw: the score drops
    assert chat["results"]["arith_gen"]["exact_match,strict-match"] == 1.0
    assert plain["results"]["arith_mc"]["acc,none"] == 1.0
    assert chat["results"]["arith_mc"]["acc,none"] < 1.0
