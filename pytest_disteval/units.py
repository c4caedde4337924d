"""Strict parsing of the units people write in suites: durations now, sizes later."""

from __future__ import annotations

import re

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
