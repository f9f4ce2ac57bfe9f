"""Output formats the commands accept (apart from the renderers, so --help stays light)."""

from __future__ import annotations

from enum import Enum


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
