"""Allocation patterns of single transformers operations, shared by the generate() and training sequences
(gpuplan/engines/transformers_allocations.py, gpuplan/calc/training_allocations.py)."""

from __future__ import annotations

from typing import Protocol


class Trace(Protocol):
    """A sequence being written: ``alloc`` returns a tensor id that ``free`` takes."""

    def alloc(self, size: int) -> int: ...

    def free(self, *tensors: int) -> None: ...


def rotary_embedding(trace: Trace, size: int) -> int:
    """apply_rotary_pos_emb for one of q / k (modeling_llama.py): (x * cos) + (rotate_half(x) * sin), with
    rotate_half = cat(-x2, x1). Returns the rotated tensor; the temporaries are freed."""
    times_cos = trace.alloc(size)
    negated = trace.alloc(size // 2)
    rotated = trace.alloc(size)
    trace.free(negated)
    times_sin = trace.alloc(size)
    trace.free(rotated)
    out = trace.alloc(size)
    trace.free(times_cos, times_sin)
    return out
