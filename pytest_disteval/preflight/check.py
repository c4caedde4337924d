"""The result of one preflight check, as data: name, status, detail, fix."""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL = "pass", "warn", "fail"
# a session stopped by a failing preflight check: told apart from 1 (items failed)
EXIT_PREFLIGHT = 6


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, WARN or FAIL
    detail: str
    fix: str = ""
