"""The per-sample export (--disteval-samples): full prompts and responses, redacted, linked."""

from __future__ import annotations

import json

import pytest

from conftest import Demo
from helpers import model_block, write_suite

pytestmark = pytest.mark.slow

SECRET = "sk-live-0123456789abcdef"


def test_export_holds_every_documents_prompt_response_and_metrics_and_no_secret(
        project: pytest.Pytester, demo: Demo) -> None:
    # secrets in the dataset's documents: keys that name one, and a bearer token in text
    for split in ("train", "test"):  # the same columns in both: one dataset schema
        data = project.path / "suites" / "data" / f"arith_{split}.jsonl"
        docs = [json.loads(line) for line in data.read_text().splitlines()]
        data.write_text("".join(json.dumps({**d, "api_key": SECRET, "meta": {
            "Authorization": f"Bearer {SECRET}", "note": f"call with Bearer {SECRET}"}}) + "\n"
            for d in docs))
    write_suite(project, "x", "disteval: 1\ninclude: [tasks]\nmodels:\n"
                + model_block("good", demo.good) + """\
tasks:
  - task: arith_mc
    limit: 5
    thresholds: {acc: 0.0}
  - task: arith_gen
    limit: 4
    thresholds: {"exact_match,strict-match": 0.0}
""")
    base = project.path / ".disteval"
    export = base / "results" / "suites" / "x" / "good.samples.jsonl"
    # stored without an export first: asking for one evaluates again, then reuses
    project.runpytest("suites").assert_outcomes(passed=2)
    assert not export.exists()
    run = project.runpytest("suites", "--disteval-samples", "--disteval-md=r.md",
                            "--disteval-html=r.html")
    run.assert_outcomes(passed=2)
    assert "(cached)" not in run.stdout.str()
    text = export.read_text(encoding="utf-8")
    assert SECRET not in text
    rows = [json.loads(line) for line in text.splitlines()]
    mc = [r for r in rows if r["task"] == "arith_mc"]
    gen = [r for r in rows if r["task"] == "arith_gen"]
    # one line per document and filter: arith_gen has two filters
    assert [r["doc_id"] for r in mc] == [0, 1, 2, 3, 4]
    assert sorted((r["doc_id"], r["filter"]) for r in gen) == sorted(
        (i, f) for i in range(4) for f in ("strict-match", "flexible-extract"))
    first = mc[0]
    assert first["entry"] == "arith_mc" and first["prompt"] == f"{docs[0]['a']}+{docs[0]['b']}="
    assert first["choices"] == [f" {c}" for c in docs[0]["choices"]]
    assert first["target"] == docs[0]["label"]
    assert len(first["responses"]) == len(first["choices"]) == len(first["filtered"])
    assert first["doc"]["api_key"] == "[redacted]"
    assert first["doc"]["meta"] == {"Authorization": "[redacted]",
                                    "note": "call with Bearer [redacted]"}
    assert first["doc"]["a"] == docs[0]["a"]  # the rest of the document as it is
    g = gen[0]
    assert g["prompt"].endswith(f"{docs[g['doc_id']]['a']}+{docs[g['doc_id']]['b']}=")
    assert isinstance(g["responses"][0], str) and "until" in g["arguments"][0]
    assert set(g["metrics"]) == {"exact_match"}
    # the per-document values are the ones the score is the mean of
    results = json.loads((base / "results" / "suites" / "x" / "good.json").read_text())
    assert sum(r["metrics"]["acc"] for r in mc) / 5 == results["results"]["arith_mc"]["acc,none"]
    strict = [r["metrics"]["exact_match"] for r in gen if r["filter"] == "strict-match"]
    assert sum(strict) / 4 == results["results"]["arith_gen"]["exact_match,strict-match"]
    # linked from every report
    assert results["config"]["disteval"]["samples"] == str(export)
    report = json.loads((base / "report.json").read_text())
    assert report["jobs"][0]["samples_path"] == str(export)
    assert f"- good: `{export}`" in (project.path / "r.md").read_text()
    assert f'<a href="{export.as_uri()}">' in (project.path / "r.html").read_text()
    # stored with the export: a third run reuses everything and still writes the file
    export.unlink()
    again = project.runpytest("suites", "--disteval-samples")
    again.assert_outcomes(passed=2)
    assert "(cached)" in again.stdout.str()
    assert export.read_text(encoding="utf-8") == text
    # without the option no file is linked
    project.runpytest("suites").assert_outcomes(passed=2)
    assert json.loads((base / "report.json").read_text())["jobs"][0]["samples_path"] is None
