"""The checks as lines: the doctor's table, the counts, why a preflight stops the session."""

from __future__ import annotations

from collections.abc import Iterable

from pytest_disteval.preflight.check import FAIL, PASS, WARN, Check


def render(checks: Iterable[Check], *, only_problems: bool = False) -> list[str]:
    rows = [c for c in checks if not (only_problems and c.status == PASS)]
    if not rows:
        return []
    width = max(len(c.name) for c in rows)
    lines = []
    for c in rows:
        lines.append(f"{c.status.upper():4}  {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != PASS:
            lines.append(f"{'':4}  {'':{width}}  fix: {c.fix}")
    return lines


def counts(checks: Iterable[Check]) -> str:
    checks = list(checks)
    return ", ".join(f"{sum(c.status == s for c in checks)} {word}"
                     for s, word in ((PASS, "passed"), (WARN, "warnings"), (FAIL, "failed")))


def failure_message(checks: list[Check], *, listed: bool = False) -> str:
    """Why the session stops; ``listed``: the failed checks were printed already."""
    failed = [c for c in checks if c.status == FAIL]
    head = (f"disteval preflight: {len(failed)} check(s) failed "
            f"({', '.join(c.name for c in failed)}); no model was loaded")
    if listed:
        return f"{head}; the fixes are listed above (pytest --disteval-doctor shows every check)"
    return "\n".join([head, *render(failed), "pytest --disteval-doctor shows every check"])
