"""gpuplan: how much GPU memory will this LLM need, and on which cards?

The public API (documented in docs/api.md)::

    import gpuplan
    result = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", batch=8, seq=4096)
    result.total_bytes
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"estimate", "load_model", "make_workload"}
__all__ = sorted(_API | {"__version__"})


def __getattr__(name: str) -> Any:
    # The facade is imported on first use so `gpuplan --help` does not pay for the calculator.
    if name in _API:
        from gpuplan import api

        return getattr(api, name)
    raise AttributeError(f"module 'gpuplan' has no attribute {name!r}")
