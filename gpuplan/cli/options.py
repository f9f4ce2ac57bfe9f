"""Parsing of option values the CLI accepts as text (lists for sweeps, sizes with k suffixes)."""

from __future__ import annotations

from gpuplan.errors import InputError
from gpuplan.units import parse_token_count


def parse_int_list(text: str, *, option: str, minimum: int = 1) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; '4k,8k' -> [4096, 8192]. Every value must be >= minimum."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise InputError(f"{option} {text!r} has an empty item", hint="write values like 1,8,32")
        try:
            value = parse_token_count(part)
        except InputError:
            raise InputError(f"{option} expects whole numbers, got {part!r}", hint="for example 1,8,32 or 4k") from None
        if value < minimum:
            raise InputError(f"{option} must be at least {minimum}, got {part!r}")
        if value not in values:
            values.append(value)
    return values
