"""Where gpuplan's bundled data lives: ``gpuplan/data`` in an installed wheel (see pyproject.toml's
force-include), ``data/`` at the repository root in a source checkout or editable install.

The bundled YAML files (the GPU catalog, the model catalog) are written and reviewed as YAML, with their
comments; each also ships as a JSON twin in ``data/compiled/``, which holds the same data and the SHA-256 of the
YAML text it was made from. Parsing the GPU catalog's YAML takes about 65 million instructions, reading its twin
about 4 million (measured with callgrind on CPython 3.11 and libyaml's loader); a plan over the whole catalog
starts up that much faster. A twin that does not match its YAML (edited without running
``python -m gpuplan.data_files``) is ignored and the YAML is parsed, so the data read is always the YAML's.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent

#: The bundled YAML files that have a JSON twin, relative to the data folder.
COMPILED_SOURCES = ("gpus.yaml", "models/catalog.yaml")
COMPILED_DIR = "compiled"


def find_data_dir(package_dir: Path) -> Path:
    installed = package_dir / "data"
    if installed.is_dir():
        return installed
    return package_dir.parent / "data"


@lru_cache(maxsize=1)
def data_dir() -> Path:
    return find_data_dir(PACKAGE_DIR)


def compiled_path(relative: str, folder: Path | None = None) -> Path:
    """Where the JSON twin of the bundled YAML file ``relative`` (``models/catalog.yaml``) lives."""
    name = relative.removesuffix(".yaml").replace("/", "--") + ".json"
    return (folder or data_dir()) / COMPILED_DIR / name


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_compiled(path: Path, text: str) -> Any | None:
    """The data of ``path``, a bundled YAML file whose text is ``text``, from its JSON twin; None when ``path``
    has no twin or the twin was made from another text (the caller then parses the YAML)."""
    folder = data_dir()
    try:
        relative = path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None  # a user's file
    if relative not in COMPILED_SOURCES:
        return None
    try:
        twin = json.loads(compiled_path(relative, folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(twin, dict) or twin.get("source_sha256") != _digest(text):
        return None
    return twin.get("data")


def compiled_text(relative: str, folder: Path | None = None) -> str:
    """The JSON twin of the bundled YAML file ``relative``, as it should be written. Raises ValueError when the
    YAML holds something JSON does not carry unchanged (a date, a key that is not a string)."""
    import yaml

    source = (folder or data_dir()) / relative
    text = source.read_text(encoding="utf-8")
    data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    dumped = json.dumps(data, ensure_ascii=False, indent=1)
    if json.loads(dumped) != data:
        raise ValueError(f"{relative} holds values JSON does not carry unchanged")
    return json.dumps({"source": relative, "source_sha256": _digest(text), "data": data}, ensure_ascii=False,
                      indent=1) + "\n"


def write_compiled(folder: Path | None = None) -> list[Path]:
    """Write every JSON twin; returns the files written."""
    written = []
    for relative in COMPILED_SOURCES:
        target = compiled_path(relative, folder)
        target.parent.mkdir(exist_ok=True)
        target.write_text(compiled_text(relative, folder), encoding="utf-8")
        written.append(target)
    return written


if __name__ == "__main__":
    for written_path in write_compiled():
        print(f"wrote {written_path}")
