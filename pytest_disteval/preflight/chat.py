"""Chat template checks: each model's tokenizer files against its entries' apply_chat_template.

Read from the tokenizer's files in the local model directory (or its HF cache snapshot),
as JSON and text: transformers is never imported. Three problems, before a model loads:

- an instruct model scored without its template: the tokenizer has a chat template but
  an entry leaves ``apply_chat_template`` unset, so lm-eval's default (no template)
  applies (WARN; an explicit ``apply_chat_template: false`` is taken as meant);
- a template asked of a tokenizer that has none, or a template name it does not have
  (FAIL: lm-eval would stop, or render the prompts without the template asked for);
- a doubled BOS: the template writes the BOS token itself and the tokenizer adds one
  too (WARN: every prompt starts with two).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_disteval.jobs.job import EvalJob
from pytest_disteval.plan.sizing import local_model_dir
from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check
from pytest_disteval.suite.chatfiles import Tokenizer, read_tokenizer, writes_bos

__all__ = ["Tokenizer", "chat", "read_tokenizer", "writes_bos"]

# backends whose tokenizer is a Hugging Face one, read from the weights' directory
_HF_TOKENIZERS = ("hf", "vllm", "sglang")


def _tokenizer_dir(job: EvalJob) -> Path | None:
    model = job.model
    if model.backend not in _HF_TOKENIZERS:
        return None
    args = model.model_args
    source = args.get("tokenizer") or model.weights
    revision = args.get("revision")
    return local_model_dir(str(source), str(revision) if revision else None)


def _entry_names(entries: Iterable[Any]) -> str:
    names = [e.name for e in entries]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def chat(jobs: Iterable[EvalJob]) -> list[Check]:
    """The chat template checks of every job whose tokenizer files are on this machine."""
    checks: list[Check] = []
    for job in jobs:
        directory = _tokenizer_dir(job)
        tok = read_tokenizer(directory) if directory is not None else None
        if tok is None:
            continue  # not local (the models check says so) or not an HF tokenizer
        checks.extend(_job_checks(job, tok))
    return checks


def _job_checks(job: EvalJob, tok: Tokenizer) -> list[Check]:
    name = f"chat template {job.suite.path}::{job.name}"
    entries = job.entries or job.model.tasks
    asked = [e for e in entries if e.eval_setting("apply_chat_template")]
    unset = [e for e in entries if "apply_chat_template" not in e.evaluation]
    checks: list[Check] = []
    if asked and not tok.has_template:
        checks.append(Check(name, FAIL, (
            f"entries {_entry_names(asked)} set apply_chat_template, but the tokenizer in "
            f"{tok.path} has no chat template (tokenizer_config.json's chat_template, "
            "chat_template.jinja)"),
            "remove apply_chat_template (a base model is scored on plain prompts), or give "
            "the tokenizer its template (the chat_template key of tokenizer_config.json)"))
        return checks
    named = {e.eval_setting("apply_chat_template") for e in asked} - {True}
    for template_name in sorted(str(n) for n in named):
        if template_name in tok.templates:
            continue
        several = len(tok.templates) > 1 or "default" not in tok.templates
        have = ", ".join(sorted(tok.templates))
        checks.append(Check(
            name, FAIL if several else WARN,
            f"apply_chat_template {template_name!r}: the tokenizer in {tok.path} has "
            + (f"no template of that name (it has: {have})" if several else
               "one template only, which lm-eval uses whatever the name says"),
            f"write apply_chat_template: true, or one of: {have}"))
    if unset and tok.has_template:
        checks.append(Check(name, WARN, (
            f"the tokenizer in {tok.path} has a chat template (an instruct or chat model) but "
            f"entries {_entry_names(unset)} run without it, lm-eval's default: the model is "
            "scored on prompts unlike those it was tuned on"),
            "set apply_chat_template: true on the model (fewshot_as_multiturn follows, as in "
            "lm-eval's CLI) or run with --disteval-apply-chat-template true; "
            "apply_chat_template: false says plain prompts are meant"))
    if asked and tok.adds_bos:
        used = {e.eval_setting("apply_chat_template") for e in asked}
        templates = [tok.templates.get(str(u) if u is not True else "default")
                     for u in used]
        if any(t is not None and writes_bos(t, tok.bos_token) for t in templates):
            add_bos = job.model.model_args.get("add_bos_token")
            if add_bos is not False:
                checks.append(Check(name, WARN, (
                    f"the chat template in {tok.path} starts with the BOS token "
                    f"{tok.bos_token!r} and the tokenizer adds one too: prompts may start "
                    "with it twice"),
                    "add add_bos_token: false to the model's model_args (lm-eval's hf "
                    "option), or drop {{ bos_token }} from the template's start"))
    if not checks:
        state = ("a chat template, applied" if asked else "a chat template, not applied "
                 "(apply_chat_template: false)") if tok.has_template else "no chat template"
        checks.append(Check(name, PASS, f"{tok.path}: {state}"))
    return checks
