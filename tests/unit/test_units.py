"""Strict parsing of the units budgets are written in: every accepted form, every error."""

from __future__ import annotations

import math

import pytest

from pytest_disteval.units import parse_budget_size, parse_duration, parse_percent, parse_rate

TOK = ("tok", "tokens")


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("30min", 1800), ("1.5h", 5400), ("1h30m", 5400),
    ("2m30s", 150), ("1h 30m 15s", 5415), ("250ms", 0.25), ("1s500ms", 1.5), (12, 12),
    (0.5, 0.5), (" 90 s ", 90), ("2H", 7200)])
def test_durations(text: object, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize(("value", "says"), [
    ("ninety", "'ninety' is not a duration; write a number of seconds or numbers with units "
               "(ms, s, m, min, h), e.g. 90s, 30m, 1.5h, 1h30m"),
    ("90", "'90' is not a duration"),  # a string needs its unit; a YAML number is seconds
    ("90 sec", "is not a duration"),
    ("30m1h", "each unit comes once, largest first, e.g. 1h30m"),
    ("1m1m", "each unit comes once"),
    ("0s", "duration must be positive, got '0s'"),
    (0, "duration must be positive, got 0"),
    (-5, "duration must be positive"),
    (True, "True is not a duration"),
    (None, "None is not a duration"),
    ([1], "[1] is not a duration"),
])
def test_duration_errors(value: object, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert says in str(info.value)


@pytest.mark.parametrize(("text", "n"), [
    ("20GiB", 20 * 2**30), ("20GB", 20 * 10**9), ("1MiB", 2**20), ("512 MB", 512 * 10**6),
    ("1.5GiB", 3 * 2**29), ("2TiB", 2 * 2**40), ("100B", 100), ("20gib", 20 * 2**30)])
def test_sizes(text: str, n: int) -> None:
    assert parse_budget_size(text) == n


@pytest.mark.parametrize(("value", "says"), [
    (20, "20 is not a size: write a number and a unit, e.g. '20GiB' or '20GB' (units: GiB"),
    ("20", "a unit is required, e.g. '20GiB' or '20GB'"),
    ("20G", "unit 'G' is ambiguous or unknown; use one of GiB, MiB, KiB, TiB (powers of 2) "
            "or GB, MB, KB, TB (powers of 10) or B"),
    ("20 gigs", "unit 'gigs' is ambiguous or unknown"),
    ("lots", "invalid size 'lots': expected a number and a unit"),
    ("0GiB", "size must be positive, got '0GiB'"),
    (None, "None is not a size"),
])
def test_size_errors(value: object, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_budget_size(value)
    assert says in str(info.value)


@pytest.mark.parametrize(("text", "per_s"), [
    ("1000/s", 1000), ("1000 tok/s", 1000), ("1000 tokens/s", 1000), ("600/min", 10),
    ("7200 tok/h", 2), ("2.5/s", 2.5), (" 50 / s ", 50)])
def test_rates(text: str, per_s: float) -> None:
    assert math.isclose(parse_rate(text, TOK), per_s)


@pytest.mark.parametrize(("value", "says"), [
    (1000, "1000 is not a rate (a rate needs its time unit: write /s, /min or /h); write a "
           "number per time unit, e.g. 1000/s, 600/min, 1000 tok/s"),
    ("1000", "'1000' is not a rate; write a number per time unit"),
    ("1000/sec", "'1000/sec' is not a rate"),
    ("1000 tok/d", "is not a rate"),
    ("fast", "'fast' is not a rate"),
    ("50 req/s", "'50 req/s': 'req' is not what this rate counts (valid words before the "
                 "slash: tok, tokens, or none)"),
    ("0/s", "a rate must be positive, got '0/s'"),
    (True, "True is not a rate;"),
])
def test_rate_errors(value: object, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rate(value, TOK)
    assert says in str(info.value)


@pytest.mark.parametrize(("text", "pct"), [("40%", 40), ("99.5 %", 99.5), ("100%", 100)])
def test_percents(text: str, pct: float) -> None:
    assert parse_percent(text) == pct


@pytest.mark.parametrize(("value", "says"), [
    ("40", "'40' is not a percentage; write a number from 0 to 100 with a percent sign, "
           "e.g. 40%"),
    (40, "40 is not a percentage"),
    (0.4, "0.4 is not a percentage"),
    ("140%", "'140%' is out of range: a percentage is above 0% and at most 100%"),
    ("0%", "'0%' is out of range"),
    ("-5%", "'-5%' is not a percentage"),
])
def test_percent_errors(value: object, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_percent(value)
    assert says in str(info.value)
