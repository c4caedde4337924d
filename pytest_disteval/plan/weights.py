"""Where a model's weights are on this machine: a local directory or an HF cache snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pytest_disteval.backends import BACKENDS
from pytest_disteval.plan.sizing import hub_id_like, local_model_dir
from pytest_disteval.suite.model import MODEL_KEY, ModelSpec


def find_weights(model: ModelSpec, workdir: Path, environ: Mapping[str, str]) -> Path | None:
    """Where a worker finds the model's weights: a path (relative ones from the workdir it
    runs in) or, for a hub id, its HF cache snapshot; None: not on this machine."""
    path = Path(model.weights).expanduser()
    if (workdir / path).exists():  # an absolute path stays itself
        return workdir / path
    if not BACKENDS[model.backend].hub_weights:
        return None
    revision = model.model_args.get("revision")
    return local_model_dir(model.weights, str(revision) if revision else None,
                           hf_hub_cache(environ))


def weights_missing(model: ModelSpec, workdir: Path,
                    environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """For weights ``find_weights`` did not find: where they were looked for, and the fixes."""
    weights, key = model.weights, f"model_args.{MODEL_KEY[model.backend]}"
    path = workdir / Path(weights).expanduser()
    looked = [f"no directory {path}"]
    fixes = [f"point {key} at the model's directory (a relative path is relative to the "
             "suite file)"]
    if BACKENDS[model.backend].hub_weights and hub_id_like(weights):
        revision = model.model_args.get("revision")
        repo = hf_hub_cache(environ) / f"models--{weights.replace('/', '--')}"
        looked.append(f"as a hub id, no {'revision ' + str(revision) + ' in ' if revision else ''}"
                      f"{repo}")
        fixes.insert(0, f"where there is network: hf download {weights}"
                        + (f" --revision {revision}" if revision else "")
                        + " (with the same HF_HOME or HF_HUB_CACHE as pytest: the "
                        "workers read that cache)")
    return looked, fixes


def hf_hub_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("HF_HUB_CACHE") or environ.get("HUGGINGFACE_HUB_CACHE")
                or Path(environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
                / "hub")
