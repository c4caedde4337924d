"""Settings resolved once per session: command line > ini > environment > default.

Every validator says where a bad value came from, and raises pytest.UsageError.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .units import parse_duration

DEFAULT_TIMEOUT = "2h"


@dataclass(frozen=True)
class Settings:
    base_dir: Path  # holds store/, results/, logs/, runs/
    use_cache: bool
    clear_cache: bool
    timeout: float | None  # seconds per job; None: no limit
    python: str  # interpreter that runs the workers

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "store"

    @property
    def results_dir(self) -> Path:
        return self.base_dir / "results"

    @property
    def logs_dir(self) -> Path:
        return self.base_dir / "logs"

    @property
    def runs_dir(self) -> Path:
        return self.base_dir / "runs"


def _pick(config: pytest.Config, option: str, ini: str, env: str) -> tuple[object, str]:
    value = config.getoption(option)
    if value is not None:
        return value, f"--{option.replace('_', '-')}"
    ini_value = config.getini(ini)
    if ini_value not in (None, "", []):
        return ini_value, f"ini option {ini!r}"
    if os.environ.get(env):
        return os.environ[env], f"environment variable {env}"
    return None, "default"


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise pytest.UsageError(f"{where}: {value!r} is not a boolean (true/false)")


def resolve(config: pytest.Config) -> Settings:
    base, _ = _pick(config, "disteval_dir", "disteval_dir", "DISTEVAL_DIR")
    base_dir = Path(str(base)) if base else config.rootpath / ".disteval"
    if not base_dir.is_absolute():
        base_dir = config.rootpath / base_dir
    cache, where = _pick(config, "disteval_cache", "disteval_cache", "DISTEVAL_CACHE")
    use_cache = True if cache is None else _bool(cache, where)
    timeout_value, where = _pick(config, "disteval_timeout", "disteval_timeout",
                                 "DISTEVAL_TIMEOUT")
    timeout: float | None
    if timeout_value is None:
        timeout = parse_duration(DEFAULT_TIMEOUT)
    elif str(timeout_value).strip().lower() in {"0", "none", "off"}:
        timeout = None
    else:
        try:
            timeout = parse_duration(str(timeout_value))
        except ValueError as exc:
            raise pytest.UsageError(f"{where}: {exc}; or 'off' for no limit") from None
    return Settings(
        base_dir=base_dir,
        use_cache=use_cache,
        clear_cache=bool(config.getoption("disteval_clear_cache")),
        timeout=timeout,
        python=sys.executable,
    )
