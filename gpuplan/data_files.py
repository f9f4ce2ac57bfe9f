"""Where gpuplan's bundled data lives: ``gpuplan/data`` in an installed wheel (see pyproject.toml's
force-include), ``data/`` at the repository root in a source checkout or editable install."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def data_dir() -> Path:
    package = Path(__file__).resolve().parent
    installed = package / "data"
    if installed.is_dir():
        return installed
    return package.parent / "data"
