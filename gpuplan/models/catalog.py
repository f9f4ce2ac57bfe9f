"""The bundled catalog of model configs (data/models/): gpuplan's offline default source."""


import difflib
import re
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from gpuplan.data_files import data_dir, read_compiled
from gpuplan.errors import ConfigError

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    file: str
    aliases: tuple[str, ...] = ()
    parameters: int | None = None
    parameters_source: str | None = None
    config_source: str | None = None
    published_size: str | None = None
    vocab_size: int | None = None
    """For Meta params.json entries, whose vocab_size is -1 (taken from the tokenizer)."""
    context_length: int | None = None
    """For configs that do not state their context length (Meta params.json)."""

    @property
    def path(self) -> Path:
        return data_dir() / "models" / self.file


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


class Catalog:
    def __init__(self, entries: list[CatalogEntry]) -> None:
        self.entries = entries
        self._index: dict[str, CatalogEntry] = {}
        for entry in entries:
            for name in (entry.id, *entry.aliases):
                self._index[_key(name)] = entry

    def get(self, name: str) -> CatalogEntry | None:
        return self._index.get(_key(name))

    def suggestions(self, name: str, n: int = 3) -> list[str]:
        names = [e.id for e in self.entries] + [a for e in self.entries for a in e.aliases]
        lowered = {n_.lower(): n_ for n_ in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
        return [lowered[c] for c in close]

    def search(self, text: str | None) -> list[CatalogEntry]:
        if not text:
            return list(self.entries)
        needle = text.lower()
        return [e for e in self.entries if needle in e.id.lower() or any(needle in a for a in e.aliases)]


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    path = data_dir() / "models" / "catalog.yaml"
    try:
        text = path.read_text(encoding="utf-8")
        raw = read_compiled(path, text)  # the JSON twin (gpuplan/data_files.py), else the YAML itself
        if raw is None:
            raw = yaml.load(text, Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:  # a broken install, not user input
        raise ConfigError(f"cannot read the bundled catalog {path}: {exc}") from exc
    try:
        entries = [CatalogEntry.model_validate(item) for item in raw or []]
    except ValidationError as exc:
        raise ConfigError(f"bundled catalog {path} is invalid: {exc}") from exc
    return Catalog(entries)
