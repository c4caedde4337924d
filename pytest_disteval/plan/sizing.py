"""Model sizing from local files: parameters (config.json, safetensors headers), memory.

Imported at pytest collection time: reads files, never imports torch.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any


# the estimate: weights x 1.2 for activations, KV cache and the framework's own buffers
class LayoutError(ValueError):
    """A layout that cannot work, or a model that cannot be measured; says what to change."""


MEMORY_OVERHEAD = 1.2


_DTYPE_BYTES: dict[str, float] = {
    "float64": 8, "fp64": 8, "double": 8,
    "float32": 4, "fp32": 4, "float": 4,
    "float16": 2, "fp16": 2, "half": 2,
    "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int8": 1, "8bit": 1,
    "int4": 0.5, "4bit": 0.5, "nf4": 0.5, "fp4": 0.5,
}  # fmt: skip


# safetensors header dtypes; F4/F6 are packed formats of newer safetensors
_SAFETENSORS_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
    "F6_E2M3": 0.75, "F6_E3M2": 0.75, "F4": 0.5,
}  # fmt: skip


_DEFAULT_BYTES = 2.0  # what "auto" means when nothing says otherwise: 16-bit weights


def bytes_per_param(dtype: str, model_path: Path | str | None = None) -> float:
    """Bytes per parameter for a dtype name; "auto" reads config.json of `model_path`."""
    key = dtype.strip().lower().removeprefix("torch.")
    if key == "auto":
        config = _read_config(Path(model_path)) if model_path is not None else None
        declared = _config_dtype(config) if config else None
        return bytes_per_param(declared) if declared else _DEFAULT_BYTES
    try:
        return _DTYPE_BYTES[key]
    except KeyError:
        valid = ", ".join(sorted(_DTYPE_BYTES)) + ", auto"
        raise LayoutError(f"unknown dtype {dtype!r}; valid: {valid}") from None


def _config_dtype(config: Mapping[str, Any]) -> str | None:
    # transformers writes torch_dtype, and dtype since 4.56
    for source in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str) and value.lower().removeprefix("torch.") in _DTYPE_BYTES:
                return value
    return None


def estimate_memory(params: int, dtype: str, model_path: Path | str | None = None) -> int:
    """Bytes one replica needs: params x bytes per param x 1.2."""
    return round(params * bytes_per_param(dtype, model_path) * MEMORY_OVERHEAD)


def _read_config(model_path: Path) -> dict[str, Any] | None:
    path = model_path / "config.json" if model_path.is_dir() else model_path.parent / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read {path}: {exc}") from exc
    return config if isinstance(config, dict) else None


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # multimodal checkpoints (Llava, Gemma 3, ...) keep the language model's shape inside
    inner = config.get("text_config")
    if isinstance(inner, dict) and not _first(config, "hidden_size", "n_embd", "d_model"):
        return inner
    return config


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def read_attention_heads(model_path: Path | str) -> int | None:
    """num_attention_heads (n_head for GPT-2 style) from config.json, or None."""
    config = _read_config(Path(model_path))
    if not config:
        return None
    heads = _first(_text_config(config), "num_attention_heads", "n_head", "num_heads")
    return heads if isinstance(heads, int) and heads > 0 else None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: 8-byte little-endian length, then JSON."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise LayoutError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:  # the format caps headers at 100 MB
                raise LayoutError(f"{path} is not a safetensors file (header of {length} bytes)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise LayoutError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise LayoutError(f"{path} is not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise LayoutError(f"{path} is not a safetensors file (header is not a JSON object)")
    return header


def _tensors(header: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(dtype, element count) for each tensor of a header."""
    out = []
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        out.append((str(info.get("dtype", "")), math.prod(int(d) for d in info.get("shape", []))))
    return out


def count_parameters(model_path: Path | str) -> int:
    """Parameters of a local checkpoint, without loading it.

    In order: safetensors headers (every shard of model.safetensors.index.json, or the
    .safetensors files in the directory); the index's total_size divided by the dtype
    size when shards are missing; an estimate from config.json. Quantized checkpoints
    pack several parameters per stored element, so for them config.json wins.
    """
    path = Path(model_path)
    if not path.exists():
        raise LayoutError(
            f"cannot count the parameters of {model_path}: no such file or directory "
            "(a local checkpoint is needed; models are not downloaded to plan a layout)"
        )
    if path.is_file():
        return sum(n for _, n in _tensors(read_safetensors_header(path)))
    config = _read_config(path)
    if config and "quantization_config" in config:
        return estimate_parameters(config, path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _count_from_index(index, config)
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    files = files or sorted(path.glob("*.safetensors"))
    if files:
        return sum(n for f in files for _, n in _tensors(read_safetensors_header(f)))
    if config:
        return estimate_parameters(config, path)
    raise LayoutError(
        f"cannot count the parameters of {path}: found no *.safetensors, no "
        "model.safetensors.index.json and no config.json there"
    )


def _count_from_index(index: Path, config: Mapping[str, Any] | None) -> int:
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise LayoutError(f"cannot read {index}: {exc}") from exc
    shards = sorted({str(s) for s in (data.get("weight_map") or {}).values()})
    present = [index.parent / s for s in shards if (index.parent / s).is_file()]
    if shards and len(present) == len(shards):
        return sum(n for f in present for _, n in _tensors(read_safetensors_header(f)))
    total = (data.get("metadata") or {}).get("total_size")
    if not isinstance(total, (int, float)) or total <= 0:
        raise LayoutError(f"cannot count the parameters from {index}: no metadata.total_size")
    if present:
        # the dtype that holds most elements: norms kept in float32 do not change it
        weight: dict[str, int] = {}
        for dtype, n in _tensors(read_safetensors_header(present[0])):
            weight[dtype] = weight.get(dtype, 0) + n
        size = _SAFETENSORS_BYTES.get(max(weight, key=lambda d: weight[d]), 0) if weight else 0
    else:
        declared = _config_dtype(config) if config else None
        size = bytes_per_param(declared) if declared else 0
    if not size:
        raise LayoutError(
            f"cannot count the parameters from {index}: no shard or config.json says the dtype"
        )
    return round(total / size)


# transformer families whose MLP has two matrices (up, down) rather than gate, up, down
_UNGATED = {
    "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "gpt_neo", "opt", "falcon", "phi", "bloom",
    "mpt", "starcoder2", "codegen", "bert", "roberta",
}  # fmt: skip


def estimate_parameters(config: Mapping[str, Any], where: Path | str = "config.json") -> int:
    """Parameters of a decoder-only transformer from its config (biases and norms aside)."""
    shape = _text_config(config)
    vocab = _first(shape, "vocab_size", "padded_vocab_size")
    hidden = _first(shape, "hidden_size", "n_embd", "d_model")
    layers = _first(shape, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(shape, "num_attention_heads", "n_head", "num_heads")
    missing = [
        name
        for name, value in (("vocab_size", vocab), ("hidden_size", hidden),
                            ("num_hidden_layers", layers), ("num_attention_heads", heads))
        if not isinstance(value, int) or value <= 0
    ]  # fmt: skip
    if missing:
        raise LayoutError(
            f"cannot estimate the parameters of {where}: config.json lacks {', '.join(missing)} "
            "(and there are no safetensors files to read)"
        )
    kv_heads = _first(shape, "num_key_value_heads", "n_head_kv", "num_kv_heads") or heads
    head_dim = _first(shape, "head_dim") or hidden // heads
    intermediate = _first(shape, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    experts = _first(shape, "num_local_experts", "num_experts", "n_routed_experts") or 1
    if experts > 1:
        intermediate = _first(shape, "moe_intermediate_size") or intermediate
    model_type = str(config.get("model_type", "")).lower()
    matrices = 2 if model_type in _UNGATED else 3
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    mlp = matrices * hidden * intermediate * experts + (hidden * experts if experts > 1 else 0)
    norms = 2 * hidden
    # transformers omits tie_word_embeddings from config.json when it is the default, True
    tied = bool(config.get("tie_word_embeddings", shape.get("tie_word_embeddings", True)))
    embeddings = vocab * hidden * (1 if tied else 2)
    if model_type in ("gpt2", "opt", "gpt_bigcode", "gpt_neo"):  # learned positions
        embeddings += (_first(shape, "n_positions", "max_position_embeddings") or 0) * hidden
    return int(layers * (attention + mlp + norms) + embeddings + hidden)


def hub_id_like(name: str) -> bool:
    """Whether ``name`` can be a hub id the HF cache holds: ``org/name``, or a legacy id
    without an org (``gpt2``)."""
    return bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~"))


def local_model_dir(model: str | Path, revision: str | None = None,
                    hub_cache: Path | None = None) -> Path | None:
    """A local directory for `model`: the path itself, or its snapshot in the HF cache.

    `revision`: a branch or tag (read from refs/) or a commit hash (a snapshot name).
    `hub_cache`: the HF hub cache to look in (default: HF_HUB_CACHE, or HF_HOME's hub/).
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    name = str(model)
    if not hub_id_like(name):
        return None
    hub = hub_cache or Path(os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"),
        "hub",
    ))
    repo = Path(hub) / ("models--" + name.replace("/", "--"))
    rev = revision or "main"
    if (repo / "snapshots" / rev).is_dir():
        return repo / "snapshots" / rev
    try:
        ref = (repo / "refs" / rev).read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / ref
    return snapshot if snapshot.is_dir() else None
