"""Backends: every fact about each one, and how a layout becomes its model_args and launch.

This is the one place for them: the names suites may write and the model_args key
naming the weights (suite/model.py reads them), the distributions whose versions
key the results (jobs/job.py) and that the doctor shows (preflight/software.py). Imported at
collection: no torch, no lm-eval here.

Parallel math inside a group is the backend's: HF spreads a model over the
group's GPUs with a device map (``parallelize=True``), vLLM and SGLang split
attention heads (tp) and layers (pp), NeMo runs one rank per GPU under
torchrun. dp is ours for every backend: each group runs one replica on its
shard of the requests.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from pytest_disteval.executors.forkserver import COMMON_PRELOAD
from pytest_disteval.plan.layout import Layout, LayoutError

# model_args keys the layout decides
LAYOUT_KEYS = frozenset({"tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                         "tp_size", "dp_size", "tensor_model_parallel_size",
                         "pipeline_model_parallel_size", "devices"})


@dataclass(frozen=True)
class Backend:
    name: str  # as written in suites
    lm_eval_model: str  # lm-eval's registry name
    module: str  # the package that must import in the worker
    install_hint: str
    splits_heads: bool  # tp must divide the attention heads
    torchrun: bool  # one process per GPU of the group
    weights_key: str  # the model_args key naming the weights, as lm-eval's model class takes it
    # the distributions that carry the backend's version, as the doctor shows it
    distributions: tuple[str, ...]
    # the distributions whose versions can change what the backend computes: in the model key
    score_packages: tuple[str, ...]
    hub_weights: bool = True  # the weights may be a hub id, found in the HF cache
    # worker environment defaults (the user's own environment wins)
    env: dict[str, str] = field(default_factory=dict)
    # what a forkserver imports before forking this backend's workers (executors/
    # forkserver.py); None: its workers start as subprocesses (not checked to fork safely)
    preload: tuple[str, ...] | None = None

    def available(self) -> bool:
        # find_spec does not import the package: collection and planning stay light
        return importlib.util.find_spec(self.module) is not None

    def model_args(self, args: dict[str, Any], layout: Layout, on_gpu: bool) -> dict[str, Any]:
        """The suite's model_args with the layout applied.

        A layout key written in model_args that disagrees with the layout is an error:
        the layout (tp/pp in the suite or on the command line) is the one place for it.
        """
        out = dict(args)
        if self.name == "sglang" and layout.pp > 1:
            raise LayoutError("sglang: lm-eval's sglang model takes no pipeline parallel "
                              f"size; use tp only (got {layout})")
        if self.name == "hf":
            if on_gpu and layout.group_size > 1:
                # accelerate's device map over the GPUs CUDA_VISIBLE_DEVICES shows: the group
                out.setdefault("parallelize", True)
        elif self.name == "vllm":
            out["tensor_parallel_size"] = layout.tp
            out["pipeline_parallel_size"] = layout.pp
            out["data_parallel_size"] = 1  # dp is done by our shards, one engine per group
        elif self.name == "sglang":
            out["tp_size"] = layout.tp
            out["dp_size"] = 1
        elif self.name == "nemo_lm":
            out["tensor_model_parallel_size"] = layout.tp
            out["pipeline_model_parallel_size"] = layout.pp
            out["devices"] = layout.group_size
        for key, value in out.items():
            if key in LAYOUT_KEYS and key in args and args[key] != value:
                raise LayoutError(f"model_args.{key}={args[key]} disagrees with the layout "
                                  f"({layout}); set tp/pp in the suite or on the command line "
                                  f"and leave {key} out")
        return out

    def launch(self, python: str, layout: Layout) -> list[str]:
        """The command prefix that starts one replica's worker (the spec path follows)."""
        if self.torchrun and layout.group_size > 1:
            return [python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={layout.group_size}", "-m", "pytest_disteval.worker"]
        return [python, "-m", "pytest_disteval.worker"]


BACKENDS: dict[str, Backend] = {
    # forked from a server that imported its model stack (tests/integration/test_forkserver_runs.py)
    "hf": Backend("hf", "hf", "transformers", "pip install 'pytest-disteval[hf]'",
                  splits_heads=False, torchrun=False, weights_key="pretrained",
                  distributions=("transformers", "accelerate"),
                  score_packages=("torch", "transformers", "accelerate", "peft"),
                  preload=("torch", "transformers", "lm_eval.models.huggingface",
                           *COMMON_PRELOAD)),
    # vLLM's engine processes must not fork a process that may already hold CUDA.
    # Not forked from the forkserver: vLLM starts processes and threads of its own
    # and its import was not checked to leave the server fork-safe
    "vllm": Backend("vllm", "vllm", "vllm", "pip install vllm",
                    splits_heads=True, torchrun=False, weights_key="pretrained",
                    distributions=("vllm",), score_packages=("vllm", "torch", "transformers"),
                    env={"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}),
    "sglang": Backend("sglang", "sglang", "sglang", "pip install 'sglang[all]'",
                      splits_heads=True, torchrun=False, weights_key="pretrained",
                      distributions=("sglang",),
                      score_packages=("sglang", "torch", "transformers")),
    # a .nemo checkpoint is a local path, never a hub id
    "nemo_lm": Backend("nemo_lm", "nemo_lm", "nemo", "pip install 'nemo_toolkit[nlp]'",
                       splits_heads=True, torchrun=True, weights_key="path",
                       distributions=("nemo_toolkit",),
                       score_packages=("nemo_toolkit", "megatron-core", "torch"),
                       hub_weights=False),
}
