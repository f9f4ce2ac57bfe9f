"""Memoizing pure functions of a ModelSpec.

A plan estimates the same model on many GPU types and layouts, and much of each estimate depends only on the
model (its KV cache groups, its sharded weights per layout). A ModelSpec is frozen but hashing one hashes every
tensor group, so results are kept by the spec's identity, with the spec held beside them so that its id cannot
pass to another spec while the entry lives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

# Entries kept per memoized function before the memo starts afresh. A plan of DeepSeek-R1 over the bundled GPU
# catalog (the largest search, docs/performance.md) asks for 45 (tensor, pipeline) layouts, so several plans'
# worth fit; a full memo is cleared rather than trimmed, which is simpler and as good for this pattern.
MEMO_SIZE = 256


def per_spec(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn(spec, *args)`` computed once per (spec, args); ``args`` must be hashable and the result must not be
    mutated by callers (return tuples, frozen models)."""
    entries: dict[tuple[Any, ...], tuple[Any, R]] = {}

    @functools.wraps(fn)
    def memoized(spec: Any, *args: Any) -> R:
        key = (id(spec), *args)
        found = entries.get(key)
        if found is not None and found[0] is spec:
            return found[1]
        value = fn(spec, *args)
        if len(entries) >= MEMO_SIZE:
            entries.clear()
        entries[key] = (spec, value)
        return value

    memoized.cache_clear = entries.clear  # type: ignore[attr-defined]
    return memoized
