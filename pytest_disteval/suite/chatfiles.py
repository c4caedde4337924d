"""A tokenizer's chat templates and BOS handling, read from its files as JSON and text.

Shared by collection (a template name the local tokenizer lacks is a file:line error)
and the preflight's chat check; transformers is never imported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Tokenizer:
    """What the checks need of a tokenizer's files."""

    path: Path
    templates: dict[str, str] = field(default_factory=dict)  # name -> template; "default"
    bos_token: str | None = None
    adds_bos: bool = False  # the tokenizer puts its BOS before every encoded text

    @property
    def has_template(self) -> bool:
        return bool(self.templates)


def _token(value: Any) -> str | None:
    if isinstance(value, dict):  # an AddedToken written out: {"content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer files in ``directory``; None when it has no tokenizer_config.json."""
    config = _read_json(directory / "tokenizer_config.json")
    if not isinstance(config, dict):
        return None
    tok = Tokenizer(directory, bos_token=_token(config.get("bos_token")))
    raw = config.get("chat_template")
    if isinstance(raw, str):
        tok.templates["default"] = raw
    elif isinstance(raw, list):  # several named templates: [{"name": ..., "template": ...}]
        tok.templates.update({str(t["name"]): str(t["template"]) for t in raw
                              if isinstance(t, dict) and "name" in t and "template" in t})
    # transformers' newer layout: the template in files of its own beside the config
    jinja = directory / "chat_template.jinja"
    if "default" not in tok.templates and jinja.is_file():
        tok.templates["default"] = jinja.read_text(encoding="utf-8")
    legacy = _read_json(directory / "chat_template.json")
    if "default" not in tok.templates and isinstance(legacy, dict) \
            and isinstance(legacy.get("chat_template"), str):
        tok.templates["default"] = legacy["chat_template"]
    extra = directory / "additional_chat_templates"
    if extra.is_dir():
        for path in sorted(extra.glob("*.jinja")):
            tok.templates.setdefault(path.stem, path.read_text(encoding="utf-8"))
    added = config.get("add_bos_token")
    if isinstance(added, bool):
        tok.adds_bos = added
    else:
        # a fast tokenizer's post-processor says what it adds to a single text
        tok.adds_bos = _post_processor_adds(directory / "tokenizer.json", tok.bos_token)
    return tok


def _post_processor_adds(path: Path, bos: str | None) -> bool:
    data = _read_json(path)
    if bos is None or not isinstance(data, dict):
        return False
    processor = data.get("post_processor") or {}
    steps = processor.get("processors", [processor]) if isinstance(processor, dict) else []
    for step in steps:
        single = step.get("single") if isinstance(step, dict) else None
        if isinstance(single, list) and single and isinstance(single[0], dict):
            first = single[0].get("SpecialToken") or {}
            if first.get("id") == bos:
                return True
        if isinstance(step, dict) and step.get("type") == "BertProcessing":
            return False  # [CLS] ... [SEP], not a BOS
    return False


# the template's first output, after tags ({% for %}, {% set %}): "{{ bos_token }}" or
# "{{ bos_token + '[INST]' }}" (Llama 2's), whitespace control allowed
_BOS_VAR = re.compile(r"^\s*(\{%-?[^%]*?-?%\}\s*)*\{\{-?\s*bos_token\b")


def writes_bos(template: str, bos: str | None) -> bool:
    """Whether ``template`` starts its output with the BOS token."""
    if _BOS_VAR.match(template):
        return True
    return bos is not None and template.lstrip().startswith(bos)


def missing_template(directory: Path, name: str) -> str | None:
    """Why the tokenizer in ``directory`` cannot render template ``name``; None when it can,
    or when there is no tokenizer there to tell (a hub id: the preflight looks in the cache)."""
    tok = read_tokenizer(directory) if directory.is_dir() else None
    if tok is None or name in tok.templates:
        return None
    if not tok.has_template:
        return (f"the tokenizer in {directory} has no chat template; leave "
                "apply_chat_template out for plain prompts, or give the tokenizer a template")
    if len(tok.templates) > 1 or "default" not in tok.templates:
        return (f"the tokenizer in {directory} has no chat template named {name!r}; "
                f"write one of: {', '.join(sorted(tok.templates))}")
    return None  # one template: lm-eval uses it whatever the name (the preflight warns)
