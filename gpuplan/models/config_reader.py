"""Typed reads of raw config dicts, with errors that name the key and say what was expected."""

from __future__ import annotations

from typing import Any

from gpuplan.errors import ConfigError

_MISSING = object()


class ConfigReader:
    """Wraps a config dict; every getter validates and raises ConfigError naming the offending key."""

    def __init__(self, raw: dict[str, Any], *, label: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{label}: expected a JSON object, got {type(raw).__name__}")
        self.raw = raw
        self.label = label

    def has(self, *keys: str) -> bool:
        return any(self.raw.get(k) is not None for k in keys)

    def _first(self, keys: tuple[str, ...]) -> tuple[str | None, Any]:
        for key in keys:
            value = self.raw.get(key)
            if value is not None:
                return key, value
        return None, _MISSING

    def int(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        """The first present key as an int >= minimum; ``default`` when none is present."""
        key, value = self._first(keys)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(
                    f"{self.label}: missing {' / '.join(repr(k) for k in keys)}",
                    hint="the config must state it; is this a decoder-only language model's config.json?",
                )
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{self.label}: {key!r} must be a whole number, got {value!r}")
        if int(value) < minimum:
            raise ConfigError(f"{self.label}: {key!r} must be at least {minimum}, got {value!r}")
        return int(value)

    def float(self, *keys: str, default: Any = _MISSING) -> Any:
        key, value = self._first(keys)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(f"{self.label}: missing {' / '.join(repr(k) for k in keys)}")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.label}: {key!r} must be a number, got {value!r}")
        return float(value)

    def bool(self, *keys: str, default: bool) -> bool:
        key, value = self._first(keys)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.label}: {key!r} must be true or false, got {value!r}")
        return value

    def str(self, *keys: str, default: Any = None) -> Any:
        key, value = self._first(keys)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.label}: {key!r} must be a string, got {value!r}")
        return value

    def list(self, *keys: str) -> list[Any] | None:
        key, value = self._first(keys)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            raise ConfigError(f"{self.label}: {key!r} must be a list, got {value!r}")
        return value
