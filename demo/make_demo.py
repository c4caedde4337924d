"""Build the bundled CPU demo: task data, a character-level tokenizer and two tiny Llama models.

Run from anywhere (paths are resolved relative to this file):

    .venv/bin/python demo/make_demo.py               # writes into the repository
    .venv/bin/python demo/make_demo.py --out /tmp/x  # same files under /tmp/x instead
    .venv/bin/python demo/make_demo.py --data-only   # only the two .jsonl files

Writes
    suites/data/arith_train.jsonl        few-shot pool (500 docs)
    suites/data/arith_test.jsonl         evaluation docs (200 docs)
    demo/models/tiny-arith/              trained LlamaForCausalLM + tokenizer
    demo/models/tiny-arith-untrained/    same architecture, random init, same tokenizer

The text format is the one lm-eval builds from suites/tasks/arith_{mc,gen}.yaml:
    doc_to_text "{{a}}+{{b}}=", target_delimiter " ", fewshot_delimiter "\\n\\n"
so a 2-shot prompt followed by its answer reads "3+4= 7\\n\\n10+22= 32\\n\\n12+34= 46".

Everything is seeded; the data files are byte-identical run to run. Training runs a fixed
number of steps (no wall-clock cut-off) with torch.set_num_threads(2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

DATA_SEED = 1234
TRAIN_SEED = 0
UNTRAINED_SEED = 1

MAX_OPERAND = 49  # operands 0..49, sums 0..98: every answer has at most two digits
N_TEST = 200
N_FEWSHOT_POOL = 500
DISTRACTOR_OFFSETS = (-11, -10, -9, -2, -1, 1, 2, 9, 10, 11)

# Format shared with the lm-eval task YAMLs (suites/tasks/arith_mc.yaml, arith_gen.yaml).
TARGET_DELIMITER = " "  # lm-eval default
FEWSHOT_DELIMITER = "\n\n"  # lm-eval default
MAX_SHOTS = 3  # training streams hold 1 + MAX_SHOTS examples

# Tokenizer: one token per character.
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list("0123456789+-= \n")
PAD, BOS, EOS, UNK = range(4)

# Model (float32, ~1.7 MB of weights).
MODEL_KW = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
)

# Training.
STEPS = 800
BATCH = 128
LR = 3e-3
MIN_LR_FRAC = 0.05
WARMUP = 50
WEIGHT_DECAY = 0.1
BOS_FRACTION = 0.5  # half of the training streams start with <bos> (lm-eval's add_bos_token)


# --------------------------------------------------------------------------- data


def doc_to_text(doc: dict) -> str:
    return f"{doc['a']}+{doc['b']}="


def example_text(a: int, b: int) -> tuple[str, str]:
    """(context, continuation) of one solved example, as lm-eval renders it."""
    return f"{a}+{b}=", f"{TARGET_DELIMITER}{a + b}"


def make_doc(a: int, b: int, rng: random.Random) -> dict:
    answer = a + b
    # Plausible distractors (answer +-1, +-2, +-9, +-10, +-11). None may be a string prefix
    # of the answer ("1" for "10"): a log-likelihood comparison would favour the shorter one.
    candidates = [
        answer + d
        for d in DISTRACTOR_OFFSETS
        if answer + d >= 0 and not str(answer).startswith(str(answer + d))
    ]
    choices = [answer] + rng.sample(candidates, 3)
    rng.shuffle(choices)
    return {
        "a": a,
        "b": b,
        "answer": str(answer),
        "choices": [str(c) for c in choices],
        "label": choices.index(answer),
    }


def build_data() -> tuple[list[dict], list[dict], list[tuple[int, int]]]:
    rng = random.Random(DATA_SEED)
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    rng.shuffle(pairs)
    test_pairs = pairs[:N_TEST]
    train_pairs = sorted(pairs[N_TEST:])  # every pair not in the test set: the training set
    pool_pairs = rng.sample(train_pairs, N_FEWSHOT_POOL)
    test = [make_doc(a, b, rng) for a, b in test_pairs]
    pool = [make_doc(a, b, rng) for a, b in pool_pairs]
    return pool, test, train_pairs


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own pre-token (Oniguruma has no (?s) flag, hence [\s\S]).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # decode concatenates, no spaces inserted
    # No post-processor: encode() never adds <bos>/<eos>, so lm-eval's
    # encode(context + continuation)[len(encode(context)):] split is exact.
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "clean_up_tokenization_spaces": False,
    "model_max_length": MODEL_KW["max_position_embeddings"],
    "model_input_names": ["input_ids", "attention_mask"],
    "padding_side": "right",
}

SPECIAL_TOKENS_MAP = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}


# tiny-arith-chat: the same weights and vocabulary, and a chat template that renders a
# conversation in the format the model was trained on: user turns as they are, assistant
# turns after the target delimiter " " and before the few-shot delimiter "\n\n", so a
# multi-turn few-shot prompt (lm-eval's fewshot_as_multiturn) is the plain few-shot
# prompt after a <bos>. A system message is put first, like a description.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\n\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'] + '\n\n' -}}"
    "{%- else -%}{{- raise_exception('roles are system, user and assistant') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# the files tiny-arith-chat shares with tiny-arith (relative links: the repository stays small)
CHAT_SHARED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "special_tokens_map.json")


def save_chat_variant(trained: Path, out: Path) -> None:
    """tiny-arith-chat: links to tiny-arith's files, and its own tokenizer_config.json."""
    out.mkdir(parents=True, exist_ok=True)
    for name in CHAT_SHARED:
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(os.path.relpath(trained / name, out)))
    config = {**TOKENIZER_CONFIG, "chat_template": CHAT_TEMPLATE}
    with open(out / "tokenizer_config.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def save_tokenizer(tok: Tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    for name, obj in (
        ("tokenizer_config.json", TOKENIZER_CONFIG),
        ("special_tokens_map.json", SPECIAL_TOKENS_MAP),
    ):
        with open(out / name, "w", encoding="utf-8", newline="\n") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


# --------------------------------------------------------------------------- model


def make_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(CHARS),
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        rope_theta=10000.0,
        **MODEL_KW,
    )


def save_model(model, tok: Tokenizer, out: Path) -> None:
    # Write next to the target, then swap, so a reader never sees a half-written folder.
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tok, tmp)
    _fix_config(tmp / "config.json")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _fix_config(cfg_path: Path) -> None:
    # Keep config.json readable by older transformers (4.45+): transformers 5 writes
    # "dtype" and "rope_parameters"; 4.x reads "torch_dtype" and "rope_theta".
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("torch_dtype", "float32")
    cfg.setdefault("rope_theta", 10000.0)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def training_stream(pairs, rng: random.Random, tok: Tokenizer) -> tuple[list[int], list[int]]:
    """One training sequence: 1 + MAX_SHOTS solved examples, few-shot formatted.

    Loss only on the answer tokens (" <sum>\\n") of every example, so each stream trains
    the 0-shot, 1-shot, ... MAX_SHOTS-shot positions at once.
    """
    ids: list[int] = [BOS] if rng.random() < BOS_FRACTION else []
    labels: list[int] = [-100] * len(ids)
    for i in range(1 + MAX_SHOTS):
        a, b = pairs[rng.randrange(len(pairs))]
        ctx, cont = example_text(a, b)
        c_ids = encode(tok, ctx)
        t_ids = encode(tok, cont + "\n")  # the "\n" stops generate_until
        ids += c_ids + t_ids
        labels += [-100] * len(c_ids) + t_ids
        if i < MAX_SHOTS:
            d_ids = encode(tok, FEWSHOT_DELIMITER[1:])  # rest of the delimiter
            ids += d_ids
            labels += [-100] * len(d_ids)
    return ids, labels


def collate(batch):
    n = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), n), PAD, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    return ids, lab, att


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    p = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * p)))


# --------------------------------------------------------------------------- quick eval


def prompt_for(doc: dict, shots: list[dict]) -> str:
    parts = [doc_to_text(s) + TARGET_DELIMITER + s["answer"] for s in shots]
    return "".join(p + FEWSHOT_DELIMITER for p in parts) + doc_to_text(doc)


@torch.no_grad()
def quick_eval(model, tok: Tokenizer, test, pool, num_fewshot: int, seed: int = 0) -> dict:
    """Exact-match under greedy decoding (teacher-forced: every argmax of " <answer>\\n"
    must be right) and multiple-choice accuracy (sum of log-probs of " <choice>")."""
    model.eval()
    rng = random.Random(seed)
    gen_items, mc_items = [], []
    for doc in test:
        shots = rng.sample(pool, num_fewshot) if num_fewshot else []
        ctx = encode(tok, prompt_for(doc, shots))
        gen_items.append((ctx, encode(tok, TARGET_DELIMITER + doc["answer"] + "\n")))
        for c in doc["choices"]:
            mc_items.append((ctx, encode(tok, TARGET_DELIMITER + c)))

    def score(items):
        out = []
        for i in range(0, len(items), 256):
            chunk = items[i : i + 256]
            ids, _, att = collate([(c + t, c + t) for c, t in chunk])
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits, -1)
            for j, (c, t) in enumerate(chunk):
                pos = torch.arange(len(c) - 1, len(c) + len(t) - 1)
                lp = logp[j, pos, torch.tensor(t)]
                greedy = bool((logp[j, pos].argmax(-1) == torch.tensor(t)).all())
                out.append((float(lp.sum()), greedy))
        return out

    gen = score(gen_items)
    mc = score(mc_items)
    em = sum(g for _, g in gen) / len(test)
    correct = 0
    for k, doc in enumerate(test):
        lls = [mc[4 * k + j][0] for j in range(4)]
        correct += int(max(range(4), key=lambda j: lls[j]) == doc["label"])
    model.train()
    return {"exact_match": em, "acc": correct / len(test)}


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-only", action="store_true", help="write the data files and stop")
    ap.add_argument("--chat-only", action="store_true",
                    help="write demo/models/tiny-arith-chat (beside a trained tiny-arith) and stop")
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT,
        help="root to write suites/data/ and demo/models/ under (default: the repository)",
    )
    ap.add_argument("--steps", type=int, default=STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data_dir = args.out / "suites" / "data"
    trained_dir = args.out / "demo" / "models" / "tiny-arith"
    untrained_dir = args.out / "demo" / "models" / "tiny-arith-untrained"
    chat_dir = args.out / "demo" / "models" / "tiny-arith-chat"
    if args.chat_only:
        save_chat_variant(trained_dir, chat_dir)
        return 0

    t_start = time.perf_counter()
    pool, test, train_pairs = build_data()
    write_jsonl(data_dir / "arith_train.jsonl", pool)
    write_jsonl(data_dir / "arith_test.jsonl", test)
    print(
        f"data: {len(pool)} few-shot pool docs, {len(test)} test docs, "
        f"{len(train_pairs)} training pairs (test pairs held out)"
    )
    if args.data_only:
        return 0

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    tok = build_tokenizer()
    config = make_config()

    # Untrained: same architecture, another seed.
    torch.manual_seed(UNTRAINED_SEED)
    untrained = LlamaForCausalLM(config).float()
    save_model(untrained, tok, untrained_dir)

    random.seed(TRAIN_SEED)
    torch.manual_seed(TRAIN_SEED)
    model = LlamaForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: LlamaForCausalLM {n_params} params "
        f"(hidden {MODEL_KW['hidden_size']}, layers {MODEL_KW['num_hidden_layers']})"
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    rng = random.Random(TRAIN_SEED)
    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids, lab, att = collate([training_stream(train_pairs, rng, tok) for _ in range(BATCH)])
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == args.steps - 1:
            msg = f"step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - t_train:.0f}s)"
            if os.environ.get("DEMO_EVAL_EVERY") and step % 300 == 0:
                msg += f" {quick_eval(model, tok, test, pool, 0)}"
            print(msg, flush=True)
    train_s = time.perf_counter() - t_train
    model.eval()
    save_model(model, tok, trained_dir)
    save_chat_variant(trained_dir, chat_dir)

    print(f"training: {args.steps} steps x {BATCH} streams in {train_s:.1f}s")
    for name, m in (("tiny-arith", model), ("tiny-arith-untrained", untrained)):
        for k in (0, 3):
            r = quick_eval(m, tok, test, pool, k)
            print(f"{name:22s} {k}-shot  acc {r['acc']:.3f}  exact_match {r['exact_match']:.3f}")
    print(f"total wall time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
