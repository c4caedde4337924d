"""Strict parsing of the units people write: durations (budgets, timeouts) and sizes (memory)."""

from __future__ import annotations

import re
from fractions import Fraction

_DURATION_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)"
_DURATION_RE = re.compile(rf"^\s*(?:{_DURATION_PART}\s*)+$", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_ORDER = {"h": 0, "m": 1, "min": 1, "s": 2, "ms": 3}
_DURATION_FORMS = ("write a number of seconds or numbers with units (ms, s, m, min, h), "
                   "e.g. 90s, 30m, 1.5h, 1h30m")


def parse_duration(value: object) -> float:
    """``90s``, ``30m``, ``1.5h``, ``1h30m``, ``250ms`` -> seconds; a bare number means seconds.

    Parts of a compound duration go from hours down, each unit once (``30m1h`` is
    refused: it is more likely a typo than a way to write 1h30m). Raises ValueError
    naming the valid forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {_DURATION_FORMS}")
    if isinstance(value, int | float):
        if not value > 0 or value == float("inf"):
            raise ValueError(f"duration must be positive, got {value}")
        return float(value)
    if isinstance(value, str) and _DURATION_RE.match(value):
        parts = [(n, u.lower()) for n, u in re.findall(_DURATION_PART, value, re.I)]
        ranks = [_DURATION_ORDER[u] for _, u in parts]
        if ranks != sorted(set(ranks)):
            raise ValueError(f"{value!r} is not a duration: in a compound duration each unit "
                             "comes once, largest first, e.g. 1h30m or 2m30s")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        if seconds <= 0:
            raise ValueError(f"duration must be positive, got {value!r}")
        return seconds
    raise ValueError(f"{value!r} is not a duration; {_DURATION_FORMS}")


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


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*/\s*(s|min|h)\s*$")
_RATE_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}


def parse_rate(value: object, what: tuple[str, ...] = ()) -> float:
    """``1000/s``, ``1000 tok/s``, ``50 req/s``, ``600/min`` -> per second.

    A rate needs its time unit (``/s``, ``/min``, ``/h``): a bare number could be per
    second or per minute. The word before the slash is optional and, when given, must
    be one of ``what`` (e.g. ``tok``, ``tokens``), so ``tokens_per_s: 50 req/s`` is
    refused rather than read as tokens.
    """
    forms = f"e.g. 1000/s, 600/min{', 1000 ' + what[0] + '/s' if what else ''}"
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        hint = (" (a rate needs its time unit: write /s, /min or /h)"
                if isinstance(value, int | float) and not isinstance(value, bool) else "")
        raise ValueError(f"{value!r} is not a rate{hint}; write a number per time unit, {forms}")
    number, word, per = match.groups()
    if word and word.lower() not in what:
        valid = ", ".join(what) if what else "none"
        raise ValueError(f"{value!r}: {word!r} is not what this rate counts (valid words before "
                         f"the slash: {valid}, or none); {forms}")
    rate = float(number) / _RATE_PER[per]
    if rate <= 0:
        raise ValueError(f"a rate must be positive, got {value!r}")
    return rate


_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*%\s*$")


def parse_percent(value: object) -> float:
    """``40%`` -> 40.0; the percent sign is required (0.4 and 40 would both be guesses)."""
    match = _PERCENT_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a percentage; write a number from 0 to 100 with "
                         "a percent sign, e.g. 40%")
    pct = float(match.group(1))
    if not 0 < pct <= 100:
        raise ValueError(f"{value!r} is out of range: a percentage is above 0% and at most 100%")
    return pct


def parse_budget_size(value: object) -> int:
    """A size in a suite: a string with a unit (``20GiB``, ``20GB``); a bare number is refused."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size: write a number and a unit, e.g. '20GiB' or "
                         f"'20GB' (units: {_VALID_UNITS})")
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size
