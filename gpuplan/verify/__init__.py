"""Measure real GPU memory of a model on the local GPU.

This package is the only part of gpuplan that uses torch and transformers, and it imports them only inside the
functions that need them, so that ``import gpuplan`` stays fast and works without them installed.
"""

from __future__ import annotations

__all__ = ["measure"]
