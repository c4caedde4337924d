"""A realistic job without downloads: Llama-shaped random checkpoints and tasks of real size.

    python benchmarks/realistic.py --shape 1.1b --out /tmp/llama-1.1b [--device cuda]
    python benchmarks/realistic.py --shape 7b --meta --out /tmp/llama-7b   # config only
    python benchmarks/realistic.py --tasks /tmp/suite --docs 1000 --gen-docs 500

Shapes (bf16, vocab 32000, the Llama-2 / TinyLlama layouts):

  1.1b  hidden 2048, 22 layers, 32 heads (4 KV), MLP 5632   -> 1.10 B parameters
  7b    hidden 4096, 32 layers, 32 heads (32 KV), MLP 11008 -> 6.74 B parameters
  tiny  hidden 128, 2 layers (a CPU check of the scripts)

Weights are random (seeded): scores are meaningless, times, memory and GPU
utilisation are real. ``--meta`` writes config.json and a safetensors index
without weights, which is what planning (``tp: auto``, ``--disteval-plan``)
reads. The tokenizer is the demo's character tokenizer with its vocabulary
padded to 32000 entries (``[123]`` tokens), so every id a random model
generates decodes.

Tasks (local lm-eval YAMLs over generated JSONL):

  bench_mc   multiple choice: ``docs`` documents, ~``context_chars`` characters
             (one character is one token) of arithmetic lines, 4 choices
  bench_gen  generate_until: ``gen_docs`` prompts of the same length, greedy,
             until "\\n" or ``max_gen_toks`` tokens (a random model runs to the cap)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "demo" / "models" / "tiny-arith"
VOCAB = 32000

SHAPES: dict[str, dict[str, int]] = {
    "1.1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32},
    "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
}


def llama_config(shape: str) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            **SHAPES[shape], "vocab_size": VOCAB, "max_position_embeddings": 2048,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            "tie_word_embeddings": False, "hidden_act": "silu", "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "torch_dtype": "bfloat16", "attention_bias": False}


def parameter_count(shape: str) -> int:
    c = SHAPES[shape]
    h, m, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h
    return layers * per_layer + 2 * VOCAB * h + h


def write_tokenizer(path: Path) -> None:
    """The demo's character tokenizer, its vocabulary padded to the model's 32000 ids."""
    data = json.loads((TOKENIZER / "tokenizer.json").read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    for i in range(len(vocab), VOCAB):
        vocab[f"[{i}]"] = i
    (path / "tokenizer.json").write_text(json.dumps(data))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, path / name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["model_max_length"] = 2048
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def make_model(path: Path, shape: str = "1.1b", *, device: str = "cuda",
               meta: bool = False) -> Path:
    """A seeded random checkpoint at ``path`` (kept if already there)."""
    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    if meta:
        (path / "config.json").write_text(json.dumps(llama_config(shape), indent=1))
        # a weightless index: planning reads the parameter count from total_size
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": 2 * parameter_count(shape)}, "weight_map": {}}))
        write_tokenizer(path)
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    raw = llama_config(shape)
    config = LlamaConfig(**{k: v for k, v in raw.items()
                            if k not in ("architectures", "model_type", "torch_dtype")})
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    write_tokenizer(path)
    return path


def _context(rng: random.Random, chars: int) -> str:
    lines: list[str] = []
    while sum(len(x) + 1 for x in lines) < chars:
        a, b = rng.randrange(100), rng.randrange(100)
        lines.append(f"{a}+{b}= {a + b}")
    return "\n".join(lines)


MC_YAML = """\
task: bench_mc
output_type: multiple_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/bench_mc.jsonl
test_split: test
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
"""

GEN_YAML = """\
task: bench_gen
output_type: generate_until
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/bench_gen.jsonl
test_split: test
doc_to_text: "{{context}}"
doc_to_target: "{{answer}}"
target_delimiter: " "
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: MAX_GEN
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def make_tasks(suite_dir: Path, *, docs: int = 1000, gen_docs: int = 500,
               context_chars: int = 400, max_gen_toks: int = 32) -> None:
    """``tasks/bench_mc.yaml`` and ``tasks/bench_gen.yaml`` with their data under suite_dir."""
    rng = random.Random(0)
    mc, gen = [], []
    for _ in range(docs):
        a, b = rng.randrange(100), rng.randrange(100)
        answer = a + b
        choices = [str(answer), str(answer + 1), str(answer + 10), str(max(0, answer - 1))]
        rng.shuffle(choices)
        mc.append({"context": _context(rng, context_chars) + f"\n{a}+{b}=",
                   "choices": choices, "label": choices.index(str(answer))})
    for _ in range(gen_docs):
        a, b = rng.randrange(100), rng.randrange(100)
        gen.append({"context": _context(rng, context_chars) + f"\n{a}+{b}=",
                    "answer": str(a + b)})
    data = suite_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "bench_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (data / "bench_gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    tasks = suite_dir / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "bench_mc.yaml").write_text(MC_YAML)
    (tasks / "bench_gen.yaml").write_text(GEN_YAML.replace("MAX_GEN", str(max_gen_toks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.1b")
    parser.add_argument("--out", type=Path, help="where to write the checkpoint")
    parser.add_argument("--device", default="cuda", help="where to initialise the weights")
    parser.add_argument("--meta", action="store_true", help="config and index only, no weights")
    parser.add_argument("--tasks", type=Path, help="a suite directory to write the tasks into")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--gen-docs", type=int, default=500)
    parser.add_argument("--context-chars", type=int, default=400)
    args = parser.parse_args()
    if args.out:
        make_model(args.out, args.shape, device=args.device, meta=args.meta)
        print(f"{args.shape}: {parameter_count(args.shape) / 1e9:.2f} B parameters at {args.out}")
    if args.tasks:
        make_tasks(args.tasks, docs=args.docs, gen_docs=args.gen_docs,
                   context_chars=args.context_chars)
        print(f"tasks bench_mc ({args.docs} docs), bench_gen ({args.gen_docs}) in {args.tasks}")


if __name__ == "__main__":
    main()
