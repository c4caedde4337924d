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


def good_model_suite(pytester: pytest.Pytester, name: str, checkpoint: Path,
                     tasks: str) -> Path:
    """``suites/<name>.yaml``: the local tasks, the demo checkpoint as model ``good``
    (``model_block``), and ``tasks``, the suite's ``tasks:`` block."""
    return write_suite(pytester, name, "disteval: 1\ninclude: [tasks]\nmodels:\n"
                       + model_block("good", checkpoint) + tasks)


def plan_suite(pytester: pytest.Pytester, pretrained: Path, backend: str = "hf", *,
               dtype: str = "float32", model_keys: str = "") -> Path:
    """``suites/plan.yaml`` for the plan and layout tests: model ``m`` (``pretrained`` on
    ``backend``, with the ``key: value`` lines of ``model_keys``) and one arith_mc entry."""
    keys = textwrap.indent(model_keys.strip() + "\n", "    ") if model_keys else ""
    return write_suite(pytester, "plan", f"""\
disteval: 1
include: [tasks]
models:
  - name: m
    backend: {backend}
    model_args: {{pretrained: {pretrained}, dtype: {dtype}}}
{keys}tasks:
  - task: arith_mc
    thresholds: {{acc: 0.5}}
""")


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
