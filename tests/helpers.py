"""Helpers for writing suites in pytester directories."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def write_suite(pytester: pytest.Pytester, name: str, body: str) -> Path:
    """Write ``suites/<name>.yaml`` (dedented)."""
    path = pytester.path / "suites" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


def model_block(name: str, path: Path, *, extra: str = "") -> str:
    """A model entry for the demo checkpoints on CPU, indented for ``models:``."""
    block = f"""\
  - name: {name}
    backend: hf
    model_args: {{pretrained: {path}, dtype: float32}}
    device: cpu
    batch_size: 64
"""
    return block + textwrap.indent(textwrap.dedent(extra), "    ") if extra else block


# a 3-shot multiple-choice task and a generation task, small: the dp and executor tests
DP_TASKS = """\
tasks:
  - task: arith_mc
    num_fewshot: 3
    limit: 40
    thresholds: {acc: 0.0}
  - task: arith_gen
    limit: 20
    thresholds:
      exact_match,strict-match: 0.0
"""
