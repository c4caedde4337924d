"""Strict parsing of the units people write: durations (budgets, timeouts) and sizes (memory)."""

from __future__ import annotations

import re
from fractions import Fraction

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)\s*$", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """``90s``, ``30m``, ``1.5h``, ``250ms`` -> seconds; a bare number means seconds.

    Raises ValueError naming the valid forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 30m, 1.5h")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"duration must be positive, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
            if seconds <= 0:
                raise ValueError(f"duration must be positive, got {value!r}")
            return seconds
    raise ValueError(
        f"{value!r} is not a duration; write a number of seconds or a number with a unit "
        "(ms, s, m, min, h), e.g. 90s, 30m, 1.5h"
    )


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"


_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_VALID_UNITS = "GiB, MiB, KiB, TiB (powers of 2) or GB, MB, KB, TB (powers of 10) or B"
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*\Z")


def parse_size(text: str) -> int:
    """Bytes in "80GiB", "40 GB", "512MiB", "1.5GiB": a unit is required (GiB 2**30, GB 10**9)."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid size {text!r}: expected a number and a unit, e.g. '80GiB' or '40 GB' "
            f"(units: {_VALID_UNITS})"
        )
    number, unit = match.groups()
    if not unit:
        raise ValueError(
            f"invalid size {text!r}: a unit is required, e.g. '{number}GiB' or '{number}GB' "
            f"(units: {_VALID_UNITS})"
        )
    factor = _UNITS.get(unit.lower())
    if factor is None:
        # "G" could mean 10**9 or 2**30 and the two differ by 7%: make the user say which
        raise ValueError(
            f"invalid size {text!r}: unit {unit!r} is ambiguous or unknown; use one of "
            f"{_VALID_UNITS}"
        )
    return round(Fraction(number) * factor)  # Fraction: exact for large byte counts


def format_size(n: int) -> str:
    """'80 GiB', '1.5 GiB', '512 MiB': for messages."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{n} B"
