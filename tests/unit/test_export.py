"""The per-sample export's lines: what lm-eval logged, readable, with secrets redacted."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_disteval.store.export import assemble, export_path, lines, redact, write_export


def test_secrets_are_redacted_by_key_at_any_depth_and_inside_text() -> None:
    value = {"Token": "t1", "api-key": "k", "nested": [{"password": "p", "x": 1}],
             "headers": {"Authorization": "Bearer abc", "SECRET": {"deep": 1}},
             "max_new_tokens": 32, "tokens": ["a"], "text": "curl -H 'Bearer abcdefghij123'",
             "hub": "login with hf_ABCDEFGHIJKLMNOPQRSTUVWX please"}
    assert redact(value) == {
        "Token": "[redacted]", "api-key": "[redacted]",
        "nested": [{"password": "[redacted]", "x": 1}],
        "headers": {"Authorization": "[redacted]", "SECRET": "[redacted]"},
        # keys that only look alike are not secrets
        "max_new_tokens": 32, "tokens": ["a"],
        "text": "curl -H 'Bearer [redacted]'", "hub": "login with [redacted] please"}


def test_lines_of_a_multiple_choice_and_a_generation_sample(tmp_path: Path) -> None:
    mc = {"doc_id": 7, "doc": {"q": "1+1=", "token": "s"}, "target": 1,
          "arguments": [("1+1=", " 1"), ("1+1=", " 2")],
          "resps": [[(-2.0, False)], [(-0.1, True)]],
          "filtered_resps": [(-2.0, False), (-0.1, True)],
          "filter": "none", "metrics": ["acc"], "acc": 1.0, "doc_hash": "h"}
    gen = {"doc_id": 3, "doc": {"q": "2+2="}, "target": "4",
           "arguments": [("2+2=", {"until": ["\n"], "api_key": "k"})], "resps": [["4\n"]],
           "filtered_resps": ["4"], "filter": "strict-match", "metrics": ["exact_match"],
           "exact_match": 1.0, "doc_hash": "g"}
    out = [json.loads(line) for line in lines({"m": [mc], "g": [gen]}, "e", ["m", "g", "none"])]
    assert out[0] == {"entry": "e", "task": "m", "doc_id": 7, "filter": "none",
                      "doc": {"q": "1+1=", "token": "[redacted]"}, "prompt": "1+1=", "target": 1,
                      "choices": [" 1", " 2"], "responses": [[-2.0, False], [-0.1, True]],
                      "filtered": [[-2.0, False], [-0.1, True]], "metrics": {"acc": 1.0},
                      "doc_hash": "h"}
    assert out[1]["prompt"] == "2+2=" and out[1]["responses"] == ["4\n"]
    assert out[1]["filtered"] == "4" and out[1]["metrics"] == {"exact_match": 1.0}
    assert out[1]["arguments"] == [{"until": ["\n"], "api_key": "[redacted]"}]
    entry = tmp_path / "abc.json"
    assert export_path(entry) == tmp_path / "abc.export.jsonl"
    assert write_export(export_path(entry), ["{}", "[]"]) == 2
    joined = assemble(tmp_path / "m.samples.jsonl", [export_path(entry), export_path(entry)])
    assert joined.read_text() == "{}\n[]\n{}\n[]\n"
