"""The JSON report: the run report written as one file, described by report.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_disteval.store.results import write_json_atomic

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)
