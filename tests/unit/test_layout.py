"""tp/pp/dp planning, parameter counting and the memory estimate (pytest_disteval.plan)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from pytest_disteval.plan.layout import Layout, LayoutError, plan_layout
from pytest_disteval.plan.sizing import (
    bytes_per_param,
    count_parameters,
    estimate_memory,
    estimate_parameters,
    read_attention_heads,
)

GB = 10**9
B = 10**9  # a billion parameters

# ---------------------------------------------------------------------------- Layout


def test_layout_sizes_and_str() -> None:
    layout = Layout(tp=4, pp=2, dp=3)
    assert (layout.group_size, layout.devices) == (8, 24)
    assert str(Layout(tp=4, pp=1, dp=2)) == "tp=4 pp=1 dp=2"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_layout_rejects_non_positive_whole_numbers(bad: Any) -> None:
    with pytest.raises(LayoutError, match="tp must be a whole number >= 1"):
        Layout(tp=bad)


# ---------------------------------------------------------------------------- dtypes and memory


@pytest.mark.parametrize(
    ("dtype", "size"),
    [
        ("float32", 4), ("fp32", 4), ("float16", 2), ("fp16", 2), ("half", 2),
        ("bfloat16", 2), ("BF16", 2), ("torch.bfloat16", 2), ("int8", 1), ("int4", 0.5),
        ("4bit", 0.5), ("auto", 2),
    ],
)  # fmt: skip
def test_bytes_per_param(dtype: str, size: float) -> None:
    assert bytes_per_param(dtype) == size


def test_bytes_per_param_auto_reads_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    assert bytes_per_param("auto", tmp_path) == 4
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert bytes_per_param("auto", tmp_path) == 2
    assert bytes_per_param("auto", tmp_path / "missing") == 2


def test_bytes_per_param_unknown_lists_valid() -> None:
    with pytest.raises(LayoutError, match="unknown dtype 'float13'; valid: .*bfloat16"):
        bytes_per_param("float13")


@pytest.mark.parametrize(
    ("params", "dtype", "expected"),
    [(7 * B, "fp16", 16.8 * GB), (13 * B, "fp16", 31.2 * GB), (70 * B, "fp16", 168 * GB),
     (7 * B, "fp32", 33.6 * GB), (70 * B, "int4", 42 * GB)],
)  # fmt: skip
def test_estimate_memory_is_params_times_bytes_times_1_2(
    params: int, dtype: str, expected: float
) -> None:
    assert estimate_memory(params, dtype) == pytest.approx(expected, abs=1)


# ---------------------------------------------------------------------------- plan_layout


def plan(params: int, gpu_gb: int, gpus: int, **kwargs: Any) -> Layout:
    kwargs.setdefault("tp", "auto")
    return plan_layout(
        gpus_granted=gpus,
        gpu_memory=gpu_gb * GB,
        memory_needed=estimate_memory(params, "fp16"),
        heads=64,
        needs_heads_divisible=True,
        **kwargs,
    )


def test_7b_fits_one_40gb_gpu() -> None:
    assert plan(7 * B, 40, 1) == Layout(tp=1, pp=1, dp=1)
    assert plan(7 * B, 40, 8) == Layout(tp=1, pp=1, dp=8)


def test_13b_fits_one_40gb_gpu() -> None:
    assert plan(13 * B, 40, 1).tp == 1


def test_70b_auto_tp_4_on_80gb_and_8_on_40gb() -> None:
    assert plan(70 * B, 80, 8) == Layout(tp=4, pp=1, dp=2)  # 42 GB per GPU
    assert plan(70 * B, 40, 8) == Layout(tp=8, pp=1, dp=1)  # 21 GB per GPU
    assert plan(70 * B, 80, 8, tp=None) == Layout(tp=4, pp=1, dp=2)  # unset tp is auto


def test_70b_on_16gb_gpus_refused_naming_the_estimate() -> None:
    with pytest.raises(LayoutError) as info:
        plan(70 * B, 16, 8)
    message = str(info.value)
    assert "168 GB" in message and "16 GB" in message
    assert "tp=8 x pp=1 puts 21 GB on each GPU" in message  # the best the granted GPUs do
    assert "no tp fits with 8 granted: tp=16 x pp=1 would need 16 GPUs" in message


def test_explicit_tp_too_small_suggests_the_tp_that_fits() -> None:
    with pytest.raises(LayoutError, match="84 GB on each GPU, but a GPU has 40 GB") as info:
        plan(70 * B, 40, 8, tp=2)
    assert "a group of 2 has 80 GB" in str(info.value)
    assert "tp=8 would fit (21 GB per GPU)" in str(info.value)


def test_gpus_8_tp_4_gives_dp_2() -> None:
    layout = plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=4)
    assert layout == Layout(tp=4, pp=1, dp=2) and layout.devices == 8
    assert plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=2, pp=2).dp == 2
    assert plan_layout(gpus_granted=7, gpu_memory=80 * GB, tp=2).dp == 3  # a GPU left over


def test_more_devices_than_granted_refused() -> None:
    with pytest.raises(
        LayoutError, match=r"tp=4 x pp=1 x dp=4 needs 16 GPUs; 8 granted \(--gpus 8\)"
    ):
        plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=4, dp=4, gpus_source="--gpus 8")
    with pytest.raises(LayoutError, match="tp=8 x pp=2 needs 16 GPUs for one group; 8 granted"):
        plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=8, pp=2)


def test_tp_must_divide_heads() -> None:
    with pytest.raises(LayoutError) as info:
        plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=3, heads=40, needs_heads_divisible=True)
    assert "tp=3 does not divide the model's 40 attention heads" in str(info.value)
    assert "valid tp values with 8 granted: 1, 2, 4, 5, 8" in str(info.value)
    # a backend that does not split heads accepts it
    assert plan_layout(gpus_granted=8, gpu_memory=80 * GB, tp=3, heads=40).tp == 3


def test_auto_tp_skips_tp_that_does_not_divide_heads() -> None:
    # 12 heads: tp=8 does not divide them, so a model needing 8 GPUs' share cannot fit
    with pytest.raises(LayoutError, match="no tp fits with 8 granted"):
        plan_layout(gpus_granted=8, gpu_memory=10 * GB, memory_needed=70 * GB, tp="auto",
                    heads=12, needs_heads_divisible=True)  # fmt: skip
    assert plan_layout(gpus_granted=8, gpu_memory=10 * GB, memory_needed=35 * GB,
                       heads=12, needs_heads_divisible=True).tp == 4  # fmt: skip


def test_unknown_memory_gives_tp_1() -> None:
    assert plan_layout(gpus_granted=4, gpu_memory=80 * GB, memory_needed=None) == Layout(1, 1, 4)


@pytest.mark.parametrize("field", ["tp", "pp", "dp"])
def test_bad_numbers_refused(field: str) -> None:
    with pytest.raises(LayoutError, match=f"{field} must be a whole number"):
        plan_layout(gpus_granted=8, gpu_memory=80 * GB, **{field: 0})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- counting parameters


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A real safetensors file: 8-byte length, JSON header, zeroed data."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_count_from_safetensors_header(tmp_path: Path) -> None:
    write_safetensors(
        tmp_path / "model.safetensors",
        {"embed": ("BF16", [100, 16]), "norm": ("F32", [16]), "scalar": ("F32", [])},
    )
    assert count_parameters(tmp_path) == 100 * 16 + 16 + 1
    assert count_parameters(tmp_path / "model.safetensors") == 1617


def test_count_sums_shards_without_index(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "a.safetensors", {"x": ("F16", [10, 10])})
    write_safetensors(tmp_path / "b.safetensors", {"y": ("F16", [5])})
    assert count_parameters(tmp_path) == 105


def test_count_from_index_reads_every_shard_present(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"x": ("BF16", [64, 64])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"y": ("BF16", [64])})
    index = {
        "metadata": {"total_size": 999_999},  # ignored: the headers are exact
        "weight_map": {"x": "model-00001-of-00002.safetensors",
                       "y": "model-00002-of-00002.safetensors"},
    }  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert count_parameters(tmp_path) == 64 * 64 + 64


def test_count_from_index_total_size_and_one_shard_dtype(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                      {"x": ("BF16", [64, 64]), "norm": ("F32", [64])})  # fmt: skip
    index = {
        "metadata": {"total_size": 14_000_000_000},
        "weight_map": {"x": "model-00001-of-00002.safetensors",
                       "y": "model-00002-of-00002.safetensors"},  # shard 2 not downloaded
    }  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert count_parameters(tmp_path) == 7_000_000_000  # bf16: 2 bytes a parameter


def test_count_from_index_with_no_shard_uses_config_dtype(tmp_path: Path) -> None:
    index = {"metadata": {"total_size": 28_000_000_000}, "weight_map": {"x": "s1.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    assert count_parameters(tmp_path) == 7_000_000_000


LLAMA_7B = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def test_count_from_llama_7b_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_7B))
    assert count_parameters(tmp_path) == pytest.approx(6.74e9, rel=0.02)
    assert read_attention_heads(tmp_path) == 32


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # GPT-2 small: 124M, n_embd/n_layer/n_head naming, tied embeddings, learned positions
        ({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
          "n_head": 12, "n_positions": 1024}, 124.4e6),
        # Llama-2-70B: grouped-query attention with 8 kv heads
        ({"model_type": "llama", "vocab_size": 32000, "hidden_size": 8192,
          "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
          "num_key_value_heads": 8, "tie_word_embeddings": False}, 68.98e9),
        # Mixtral-8x7B: 8 experts
        ({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
          "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "num_local_experts": 8,
          "tie_word_embeddings": False}, 46.7e9),
    ],
)  # fmt: skip
def test_estimate_parameters_known_models(config: dict[str, Any], expected: float) -> None:
    assert estimate_parameters(config) == pytest.approx(expected, rel=0.02)


def test_quantized_checkpoint_counts_from_config(tmp_path: Path) -> None:
    # packed int4 weights: 8 parameters per stored int32 element
    write_safetensors(tmp_path / "model.safetensors", {"qweight": ("F32", [512, 64])})
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_7B, "quantization_config": {}}))
    assert count_parameters(tmp_path) == pytest.approx(6.74e9, rel=0.02)


def test_read_attention_heads_gpt2_style_and_missing(tmp_path: Path) -> None:
    assert read_attention_heads(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"n_head": 12}))
    assert read_attention_heads(tmp_path) == 12
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_attention_heads": 8}}))
    assert read_attention_heads(tmp_path) == 8


def test_count_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=f"{tmp_path}: found no \\*.safetensors"):
        count_parameters(tmp_path)
    with pytest.raises(LayoutError, match="no such file or directory"):
        count_parameters(tmp_path / "meta-llama" / "Llama-2-7b-hf")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(LayoutError, match="lacks vocab_size, num_hidden_layers, num_attention"):
        count_parameters(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00nope!")
    with pytest.raises(LayoutError, match="bad.safetensors is not a safetensors file"):
        count_parameters(tmp_path)


def test_local_model_dir_follows_the_revision(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_disteval.plan.sizing import local_model_dir

    repo = tmp_path / "models--org--m"
    for name, commit in (("main", "aaa"), ("v2", "bbb")):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert local_model_dir("org/m") == repo / "snapshots" / "aaa"
    assert local_model_dir("org/m", "v2") == repo / "snapshots" / "bbb"
    assert local_model_dir("org/m", "bbb") == repo / "snapshots" / "bbb"  # a commit hash
    assert local_model_dir("org/m", "nope") is None
