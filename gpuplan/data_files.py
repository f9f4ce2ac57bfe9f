"""Where gpuplan's bundled data lives: ``gpuplan/data`` in an installed wheel (see pyproject.toml's
force-include), ``data/`` at the repository root in a source checkout or editable install."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def find_data_dir(package_dir: Path) -> Path:
    installed = package_dir / "data"
    if installed.is_dir():
        return installed
    return package_dir.parent / "data"


@lru_cache(maxsize=1)
def data_dir() -> Path:
    return find_data_dir(PACKAGE_DIR)
