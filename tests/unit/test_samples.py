"""Per-document results: lm-eval's logged samples made compact, stored, read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_disteval.store.samples import (
    HASH_CHARS,
    TEXT_CHARS,
    compact,
    read_samples,
    samples_path,
    write_samples,
)


def mc_sample(doc_id: int, label: int, lls: list[float]) -> dict[str, Any]:
    # the shape lm-eval 0.4.13 logs for a multiple_choice task (checked on arith_mc)
    choices = [f" {10 + i}" for i in range(len(lls))]
    best = max(range(len(lls)), key=lls.__getitem__)
    return {"doc_id": doc_id, "doc": {"q": doc_id}, "target": label,
            "arguments": [["1+9=", c] for c in choices],
            "resps": [[[ll, False]] for ll in lls], "filtered_resps": [[ll, False] for ll in lls],
            "filter": "none", "metrics": ["acc", "acc_norm"],
            "doc_hash": f"{doc_id:064x}", "prompt_hash": "p", "target_hash": "t",
            "acc": 1.0 if best == label else 0.0, "acc_norm": 1.0 if best == label else 0.0}


def gen_sample(doc_id: int, flt: str, response: str, em: float) -> dict[str, Any]:
    return {"doc_id": doc_id, "target": "42", "arguments": [["38+4=", {"until": ["\n"]}]],
            "resps": [[f" {response}"]], "filtered_resps": [response], "filter": flt,
            "metrics": ["exact_match", "bleu"], "doc_hash": f"{doc_id:064x}",
            "exact_match": em, "bleu": ["42", response]}


def test_multiple_choice_keeps_lm_evals_values_and_shows_the_choices() -> None:
    out = compact([mc_sample(0, 1, [-3.0, -0.1, -5.0]), mc_sample(1, 0, [-2.0, -0.5, -9.0])])
    assert out["doc_id"] == [0, 1]
    assert out["doc_hash"] == [f"{0:064x}"[:HASH_CHARS], f"{1:064x}"[:HASH_CHARS]]
    assert out["metrics"] == {"acc,none": [1, 0], "acc_norm,none": [1, 0]}
    assert out["target"] == ["11", "10"]  # the target choice's text, not its index
    assert out["response"] == {"none": ["11", "11"]}  # the likeliest choice


def test_each_filter_is_a_metric_and_corpus_metrics_are_dropped() -> None:
    samples = [gen_sample(0, "strict-match", "42", 1.0), gen_sample(1, "strict-match", "x", 0.0),
               gen_sample(0, "flexible-extract", "42", 1.0),
               gen_sample(1, "flexible-extract", "4" * 100, 0.0)]
    out = compact(samples)
    assert out["doc_id"] == [0, 1]
    # bleu logs (reference, prediction) pairs: a corpus metric has no per-document score
    assert out["metrics"] == {"exact_match,strict-match": [1, 0],
                              "exact_match,flexible-extract": [1, 0]}
    assert out["response"]["strict-match"] == ["42", "x"]
    long = out["response"]["flexible-extract"][1]
    assert len(long) == TEXT_CHARS and long.endswith("...")


def test_a_metric_missing_on_some_document_is_left_out() -> None:
    first, second = mc_sample(0, 0, [-1.0, -2.0]), mc_sample(1, 0, [-1.0, -2.0])
    second["metrics"] = ["acc"]
    assert set(compact([first, second])["metrics"]) == {"acc,none"}


def test_samples_are_stored_beside_the_entry_and_checked_on_read(tmp_path: Path) -> None:
    entry = tmp_path / "ab" / "abcd" / "ef01.json"
    per_task = {"arith_mc": compact([mc_sample(0, 0, [-1.0, -2.0])])}
    path = write_samples(entry, "ef01", per_task)
    assert path == samples_path(entry) == entry.with_name("ef01.samples.json")
    assert read_samples(entry, "ef01") == per_task
    assert read_samples(entry, "another-key") is None  # stale: another entry's samples
    path.write_text("{broken", encoding="utf-8")
    assert read_samples(entry, "ef01") is None


def test_ten_thousand_documents_stay_small(tmp_path: Path) -> None:
    samples = [mc_sample(i, i % 4, [-1.0 * ((i + j) % 4) for j in range(4)]) for i in range(10_000)]
    write_samples(tmp_path / "e.json", "e", {"t": compact(samples)})
    size = samples_path(tmp_path / "e.json").stat().st_size
    assert size < 500_000, size  # about 40 bytes a document here
    data = json.loads(samples_path(tmp_path / "e.json").read_text())
    assert len(data["tasks"]["t"]["doc_id"]) == 10_000
