"""Byte units. gpuplan computes in integer bytes and converts only when rendering.

GiB = 2**30 bytes (what nvidia-smi and torch report as "MiB"/"GiB"); GB = 10**9 bytes (what datasheets
and marketing use). Output always names which one it shows.
"""

from __future__ import annotations

import re

from gpuplan.errors import InputError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
KB = 1000
MB = 1000**2
GB = 1000**3

_SIZE_UNITS = {
    "b": 1,
    "k": KB, "kb": KB, "m": MB, "mb": MB, "g": GB, "gb": GB, "t": 1000**4, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def gib(n_bytes: int | float) -> float:
    """Bytes as GiB (2**30)."""
    return n_bytes / GiB


def parse_size(text: str) -> int:
    """Parse '79.2GiB', '80GB', '512MiB' or '1024B' into bytes.

    A bare number is refused: '24' could mean 24 GiB, 24 GB or 24 bytes, and each reading plans differently
    (24 GB is 22.35 GiB), so the unit is part of the value."""
    match = _SIZE_RE.match(text)
    if match and not match.group(2):
        raise InputError(
            f"memory size {text.strip()!r} has no unit",
            hint=f"write {match.group(1)}GiB (2^30 bytes, as nvidia-smi counts) or {match.group(1)}GB (10^9 bytes)",
        )
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise InputError(
            f"cannot read {text!r} as a memory size",
            hint="use a number with a unit such as 80GB, 79.2GiB or 512MiB",
        )
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value <= 0:
        raise InputError(f"memory size {text!r} must be positive")
    return int(value)


_COUNT_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}
_COUNT_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*$")
# Digits grouped in threes by commas, as people, model cards and gpuplan's own tables write large numbers:
# 1,000 or 32,768.
_GROUPED_COUNT_RE = re.compile(r"^\s*\d{1,3}(,\d{3})+\s*$")


def parse_token_count(text: str) -> int:
    """Parse a token count: '4096', '4k' (= 4096), '128K', '1m', '32,768'. Token counts use binary k as
    the engines and model cards do (a "128k context" is 131072 tokens)."""
    if _GROUPED_COUNT_RE.match(text):
        text = text.replace(",", "")
    match = _COUNT_RE.match(text)
    if not match:
        raise InputError(f"cannot read {text!r} as a whole number", hint="for example 4096 or 4k")
    value = float(match.group(1)) * _COUNT_SUFFIX[match.group(2).lower()]
    if value != int(value):
        raise InputError(f"{text!r} is not a whole number of tokens")
    return int(value)


def is_one_grouped_number(text: str, *, tokens: bool) -> bool:
    """Whether '1,000' / '32,768' is one number rather than a list.

    A group with a leading zero ('000', '048') is never a list item, so such text is one number for every
    option. For token counts the grouped form is one number too (model cards write "32,768 tokens"); a list
    of token counts then separates its items with a space ('512, 768') or uses k suffixes ('4k,8k')."""
    if not _GROUPED_COUNT_RE.match(text):
        return False
    groups = text.strip().split(",")[1:]
    return tokens or any(g.startswith("0") for g in groups)
