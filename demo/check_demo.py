"""Check the bundled demo models with lm-eval's Python API, offline, on CPU.

    .venv/bin/python demo/check_demo.py            # trained + untrained, 0- and 3-shot
    .venv/bin/python demo/check_demo.py --quick    # trained model, 0-shot only

Runs lm-eval with suites/ as the working directory (as the plugin does), so the
dataset paths in suites/tasks/*.yaml resolve. Exits 1 if a target is missed:
    tiny-arith:           arith_mc acc >= 0.9 and arith_gen exact_match,strict-match >= 0.9
    tiny-arith-untrained: arith_mc acc < 0.5 and arith_gen exact_match,strict-match < 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"
TASKS = SUITES / "tasks"
MODELS = {
    "tiny-arith": ROOT / "demo" / "models" / "tiny-arith",
    "tiny-arith-untrained": ROOT / "demo" / "models" / "tiny-arith-untrained",
}


def check_loading(path: Path) -> list[str]:
    """Plain transformers loading, tokenizer round trip and lm-eval's context split."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = []
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    if next(model.parameters()).dtype != torch.float32:
        problems.append(f"{path.name}: dtype {next(model.parameters()).dtype}")
    text = "3+4= 7\n\n12+34= 46"
    ids = tok.encode(text)
    if tok.decode(ids) != text:
        problems.append(f"{path.name}: decode(encode(x)) != x: {tok.decode(ids)!r}")
    if len(ids) != len(text):
        problems.append(f"{path.name}: expected one token per character, got {ids}")
    ctx, cont = "12+34=", " 46"
    whole, c = tok.encode(ctx + cont), tok.encode(ctx)
    if tok.convert_ids_to_tokens(whole[len(c) :]) != [" ", "4", "6"]:
        problems.append(f"{path.name}: bad context/continuation split {whole} / {c}")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(tok, attr) is None:
            problems.append(f"{path.name}: tokenizer has no {attr}")
    print(
        f"  {path.name}: {type(tok).__name__} vocab {len(tok)}, "
        f"{type(model).__name__} {sum(p.numel() for p in model.parameters())} params, "
        f"encode({ctx + cont!r}) -> {tok.convert_ids_to_tokens(whole)}"
    )
    return problems


class _ModelCallTimer:
    """Adds up the seconds lm-eval's HFLM spends in loglikelihood / generate_until."""

    def __init__(self) -> None:
        from lm_eval.models.huggingface import HFLM

        self.seconds = 0.0
        for name in ("loglikelihood", "generate_until"):
            original = getattr(HFLM, name)

            def timed(*a, _original=original, **kw):
                t0 = time.perf_counter()
                try:
                    return _original(*a, **kw)
                finally:
                    self.seconds += time.perf_counter() - t0

            setattr(HFLM, name, timed)


def evaluate(path: Path, num_fewshot: int, batch_size: int, task_manager, timer) -> dict:
    import lm_eval

    timer.seconds = 0.0
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype=float32",
        tasks=["arith_mc", "arith_gen"],
        num_fewshot=num_fewshot,
        task_manager=task_manager,
        device="cpu",
        batch_size=batch_size,
    )
    wall = time.perf_counter() - t0
    res = out["results"]
    return {
        "scores": {
            "arith_mc acc": res["arith_mc"]["acc,none"],
            "arith_mc acc_norm": res["arith_mc"]["acc_norm,none"],
            "arith_gen exact_match,strict-match": float(
                res["arith_gen"]["exact_match,strict-match"]
            ),
            "arith_gen exact_match,flexible-extract": float(
                res["arith_gen"]["exact_match,flexible-extract"]
            ),
        },
        "simple_evaluate_s": round(wall, 2),
        "model_calls_s": round(timer.seconds, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="trained model, 0-shot only")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the scores to this file")
    args = ap.parse_args()
    if args.json:
        args.json = args.json.resolve()

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.chdir(SUITES)  # the plugin runs lm-eval from the suite file's directory

    problems: list[str] = []
    print("loading with AutoModelForCausalLM / AutoTokenizer (HF_HUB_OFFLINE=1):")
    for path in MODELS.values():
        problems += check_loading(path)

    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    # include_defaults=False skips indexing the ~230 built-in task folders (about 6 s here).
    task_manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    print(f"TaskManager(include_path=suites/tasks) built in {time.perf_counter() - t0:.2f}s")
    timer = _ModelCallTimer()

    runs = [("tiny-arith", 0)]
    if not args.quick:
        runs += [("tiny-arith", 3), ("tiny-arith-untrained", 0), ("tiny-arith-untrained", 3)]
    report = []
    for name, k in runs:
        r = {"model": name, "num_fewshot": k}
        r.update(evaluate(MODELS[name], k, args.batch_size, task_manager, timer))
        report.append(r)
        acc = r["scores"]["arith_mc acc"]
        em = r["scores"]["arith_gen exact_match,strict-match"]
        if name == "tiny-arith" and not (acc >= 0.9 and em >= 0.9):
            problems.append(f"{name} {k}-shot below target: acc {acc}, exact_match {em}")
        if name == "tiny-arith-untrained" and not (acc < 0.5 and em < 0.1):
            problems.append(f"{name} {k}-shot not near chance: acc {acc}, exact_match {em}")

    import lm_eval
    import transformers

    versions = (
        f"lm-eval {lm_eval.__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}"
    )
    print(f"\nresults ({versions}, {torch.get_num_threads()} threads, batch {args.batch_size}):")
    for r in report:
        s = r["scores"]
        print(
            f"  {r['model']:21s} {r['num_fewshot']}-shot  "
            f"acc {s['arith_mc acc']:.3f}  acc_norm {s['arith_mc acc_norm']:.3f}  "
            f"em strict {s['arith_gen exact_match,strict-match']:.3f}  "
            f"em flexible {s['arith_gen exact_match,flexible-extract']:.3f}  "
            f"simple_evaluate {r['simple_evaluate_s']:.1f}s (model calls {r['model_calls_s']:.1f}s)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for p in problems:
        print("FAIL:", p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
