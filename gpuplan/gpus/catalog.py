"""The GPU catalog: what each card offers, with the memory its driver reports.

The bundled catalog lives in ``data/gpus.yaml`` (``gpuplan/data/gpus.yaml`` inside a wheel). Users can
add their own cards in a YAML file of the same schema and merge it over the bundled one. Names are
resolved loosely (``H100``, ``h100 sxm``, ``rtx-4090`` and ``RTX4090`` all work) because people type
them from memory; a name that matches nothing raises :class:`~gpuplan.errors.InputError` with the
closest names as a hint.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpuplan.data_files import data_dir, find_data_dir, read_compiled
from gpuplan.errors import InputError
from gpuplan.units import GB, GiB, parse_size

__all__ = [
    "BINARY_PREFIX",
    "MARKETED",
    "GpuCatalog",
    "GpuSpec",
    "custom_gpu",
    "data_path",
    "load_catalog",
    "normalize_gpu_name",
]

SCHEMA_VERSION = 1

#: ``memory_bytes_source`` value a user's catalog may give when it holds only the marketed capacity in
#: decimal GB, which differs from what the driver reports by several percent (an "80 GB" H100 reports
#: 81559 MiB, 85.5 GB). The bundled catalog never uses it (docs/gpus.md, "Memory sizes").
MARKETED = "marketed"

#: Prefix of ``memory_bytes_source`` for entries without a capture of their own or of a card with the same
#: memory: ``memory_bytes`` then holds the binary size of the stated memory ("binary: 16 GiB (16 GB GDDR6)").
BINARY_PREFIX = "binary:"

#: Memory a driver reports is below the marketed size (ECC, firmware and reserved regions); anything more
#: than 10 % above it is a typo in the data, not a measurement.
_MAX_REPORTED_OVER_MARKETED = 1.10

#: How far a probed card's memory may be from its catalog entry and still be that card. Driver-reported
#: totals differ from marketed ones by about 7 % (80 GB H100: 81559 MiB = 85.5 GB), and from each other
#: across drivers by about 1 % (A100 40 GB: 40536 vs 40960 MiB).
_MAX_DEVICE_MEMORY_MISMATCH = 0.15

Vendor = Literal["nvidia", "amd", "intel", "other"]
Segment = Literal["datacenter", "workstation", "consumer", "custom"]

# Words that vendors prepend to product names (NVML reports "NVIDIA GeForce RTX 4090", "Tesla T4"); users
# leave them out, so they never take part in matching. They are stripped after the punctuation, so glued
# forms ("nvidiageforcertx4090", "InstinctMI250") lose them too.
_VENDOR_PREFIXES = ("nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct", "intel", "habana")
_NOT_ALNUM_RE = re.compile(r"[^a-z0-9]+")


def normalize_gpu_name(name: str) -> str:
    """The key names are compared by: lower case, punctuation and leading vendor words removed.

    ``"NVIDIA GeForce RTX 4090"``, ``"rtx-4090"`` and ``"RTX4090"`` all become ``"rtx4090"``.
    """
    key = _NOT_ALNUM_RE.sub("", name.lower())
    stripped = True
    while stripped:
        stripped = False
        for prefix in _VENDOR_PREFIXES:
            # A name made only of vendor words ("NVIDIA") keeps its last one rather than vanishing.
            if key.startswith(prefix) and len(key) > len(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


class GpuSpec(BaseModel):
    """One GPU model as the planner sees it. All sizes are integers in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Canonical name, e.g. H100-SXM-80GB.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names people type for this card.")
    nvml_names: tuple[str, ...] = Field(
        default=(),
        description="Device names exactly as NVML / nvidia-smi report them; several cards may share one "
        "(RTX 3080 10 GB and 12 GB), the probe tells them apart by memory.",
    )
    vendor: Vendor
    segment: Segment
    architecture: str = Field(min_length=1)
    memory_gb: float = Field(gt=0, description="Marketed capacity in GB as printed on the datasheet.")
    memory_bytes: int = Field(gt=0, description="Total memory as the driver reports it, in bytes.")
    memory_bytes_source: str = Field(
        min_length=1,
        description="Where the driver-reported figure appears (URL or repository + path), 'same memory as NAME "
        "(...): <that card's capture>', or 'binary: N GiB (...)' (docs/gpus.md); a user's catalog may say "
        "'marketed'.",
    )
    cuda_total_bytes: int | None = Field(
        default=None, gt=0,
        description="Total as CUDA reports it (torch.cuda.mem_get_info()[1], vLLM's total_gpu_memory): "
        "nvidia-smi's total less what the driver reserves. None when no such figure was found.",
    )
    cuda_total_bytes_source: str | None = None
    bandwidth_gbps: float | None = Field(default=None, gt=0, description="Peak memory bandwidth, GB/s.")
    bf16_tflops: float | None = Field(
        default=None, gt=0, description="Dense BF16 tensor throughput (FP32 accumulate), no sparsity."
    )
    fp8_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP8 tensor throughput, no sparsity; null without FP8."
    )
    interconnect: str = Field(min_length=1)
    gpus_per_node: int = Field(ge=1, le=72)
    source: str = Field(min_length=1, description="Datasheet or product page URL.")
    spec_refs: tuple[str, ...] = Field(
        default=(), description="Where the bandwidth and throughput figures were read, when not the source."
    )
    notes: str | None = None

    @field_validator("aliases", "nvml_names", "spec_refs", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @model_validator(mode="after")
    def _reported_memory_is_plausible(self) -> GpuSpec:
        marketed = self.memory_gb * GB
        if self.memory_bytes > marketed * _MAX_REPORTED_OVER_MARKETED:
            raise ValueError(
                f"memory_bytes {self.memory_bytes} is more than 10% above the marketed {self.memory_gb} GB"
            )
        return self

    @property
    def usable_bytes(self) -> int:
        """What a CUDA process can allocate from: the CUDA total where known, else the driver total."""
        return self.cuda_total_bytes or self.memory_bytes

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    @property
    def memory_is_measured(self) -> bool:
        """True when ``memory_bytes`` is a driver-reported figure (of this card or of one with the same
        memory) rather than a stated capacity."""
        return self.memory_bytes_source != MARKETED and not self.memory_bytes_source.startswith(BINARY_PREFIX)

    def lookup_keys(self) -> tuple[str, ...]:
        """Normalized keys this entry answers to in :meth:`GpuCatalog.resolve`."""
        keys = dict.fromkeys(normalize_gpu_name(n) for n in (self.name, *self.aliases))
        return tuple(keys)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    gpus: list[dict[str, Any]]


class GpuCatalog:
    """An immutable, ordered set of :class:`GpuSpec` with loose name resolution."""

    def __init__(self, gpus: Iterable[GpuSpec], *, origin: str = "<memory>") -> None:
        self._gpus: tuple[GpuSpec, ...] = tuple(gpus)
        self.origin = origin
        self._by_key: dict[str, GpuSpec] = {}
        seen_names: set[str] = set()
        for gpu in self._gpus:
            if gpu.name in seen_names:
                raise InputError(f"GPU catalog {origin}: the name {gpu.name!r} appears twice")
            seen_names.add(gpu.name)
            for key in gpu.lookup_keys():
                other = self._by_key.get(key)
                if other is not None and other.name != gpu.name:
                    raise InputError(
                        f"GPU catalog {origin}: {gpu.name!r} and {other.name!r} both answer to {key!r}",
                        hint="give one of them a more specific alias",
                    )
                self._by_key[key] = gpu
        # An NVML device name also resolves, unless two cards share it (RTX 3080 10 GB and 12 GB).
        nvml_owners: dict[str, set[str]] = {}
        for gpu in self._gpus:
            for nvml_name in gpu.nvml_names:
                nvml_owners.setdefault(normalize_gpu_name(nvml_name), set()).add(gpu.name)
        by_name = {gpu.name: gpu for gpu in self._gpus}
        for key, owners in nvml_owners.items():
            if len(owners) == 1 and key not in self._by_key:
                self._by_key[key] = by_name[next(iter(owners))]

    def __iter__(self) -> Iterator[GpuSpec]:
        return iter(self._gpus)

    def __len__(self) -> int:
        return len(self._gpus)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"GpuCatalog({len(self)} GPUs from {self.origin})"

    @property
    def gpus(self) -> tuple[GpuSpec, ...]:
        return self._gpus

    def names(self) -> list[str]:
        return [gpu.name for gpu in self._gpus]

    def get(self, name: str) -> GpuSpec | None:
        """The entry ``name`` resolves to, or None."""
        return self._by_key.get(normalize_gpu_name(name))

    def resolve(self, name: str) -> GpuSpec:
        """The entry ``name`` resolves to; an unknown name raises InputError with suggestions."""
        found = self.get(name)
        if found is not None:
            return found
        suggestions = self.suggest(name)
        hint = (
            "did you mean " + ", ".join(suggestions) + "?"
            if suggestions
            else "no known GPU is close; for a card not in the catalog, give its memory with --gpu-memory"
        )
        raise InputError(f"unknown GPU {name!r}", hint=hint)

    def search(self, text: str | None) -> list[GpuSpec]:
        """Entries any of whose names contains ``text`` (spaces and dashes ignored); all without one."""
        needle = (text or "").lower().replace(" ", "").replace("-", "")
        return [g for g in self._gpus if not needle or any(needle in k for k in g.lookup_keys())]

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Canonical names closest to ``name`` (difflib ratio on the normalized keys)."""
        key = normalize_gpu_name(name)
        # Names are short ("h100", "l4"), where one wrong character already costs a lot of ratio.
        close = difflib.get_close_matches(key, list(self._by_key), n=limit * 3, cutoff=0.5)
        names = dict.fromkeys(self._by_key[k].name for k in close)
        return list(names)[:limit]

    def match_device(self, device_name: str, memory_bytes: int | None = None) -> GpuSpec | None:
        """The entry for a device as NVML reports it: by name, then the closest memory size.

        NVML gives one name to cards that differ only in memory ("NVIDIA GeForce RTX 3080" is sold with
        10 GB and 12 GB), so ties are broken by the reported total.
        """
        wanted = normalize_gpu_name(device_name)
        candidates = [
            gpu for gpu in self._gpus if any(normalize_gpu_name(n) == wanted for n in gpu.nvml_names)
        ]
        if not candidates:
            found = self._by_key.get(wanted)
            candidates = [found] if found is not None else []
        if not candidates:
            return None
        if memory_bytes is None:
            return candidates[0]
        best = min(candidates, key=lambda gpu: abs(gpu.memory_bytes - memory_bytes))
        # A card whose memory is far from every entry of its name is a variant the catalog lacks (an 8 GB
        # RTX 4060 Ti against the 16 GB entry): better unknown than planned with the wrong memory.
        if abs(best.memory_bytes - memory_bytes) > _MAX_DEVICE_MEMORY_MISMATCH * best.memory_bytes:
            return None
        return best

    def merged(self, other: GpuCatalog) -> GpuCatalog:
        """This catalog with ``other``'s entries added; an entry of the same name replaces ours."""
        replaced = {gpu.name for gpu in other}
        kept = [gpu for gpu in self._gpus if gpu.name not in replaced]
        return GpuCatalog([*kept, *other], origin=f"{self.origin} + {other.origin}")


def data_path(filename: str = "gpus.yaml", *, package_dir: Path | None = None) -> Path:
    """Path of a bundled data file (see gpuplan/data_files.py); ``package_dir`` is for tests."""
    folder = data_dir() if package_dir is None else find_data_dir(package_dir)
    candidate = folder / filename
    if candidate.is_file():
        return candidate
    raise InputError(
        f"bundled data file {filename!r} not found next to the gpuplan package",
        hint="reinstall gpuplan; the installation is incomplete",
    )


_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"GPU catalog file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read GPU catalog {path}: {exc.strerror or exc}") from None
    compiled = read_compiled(path, text)  # the bundled catalog's JSON twin (gpuplan/data_files.py)
    if compiled is not None:
        return compiled
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise InputError(f"GPU catalog {path} is not valid YAML{where}") from None


def _field_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _parse_catalog(raw: Any, origin: str) -> GpuCatalog:
    # A user file may be a bare list of entries; the bundled file has a versioned mapping.
    if isinstance(raw, list):
        raw = {"gpus": raw}
    if not isinstance(raw, dict):
        raise InputError(f"GPU catalog {origin} must be a mapping with a 'gpus' list")
    try:
        parsed = _CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"GPU catalog {origin}: {_field_errors(exc)}") from None
    gpus = []
    for index, entry in enumerate(parsed.gpus):
        label = entry.get("name") if isinstance(entry.get("name"), str) else f"#{index + 1}"
        try:
            gpus.append(GpuSpec.model_validate(entry))
        except ValidationError as exc:
            raise InputError(
                f"GPU catalog {origin}: entry {label!r} is invalid: {_field_errors(exc)}",
                hint="see data/gpus.yaml for the expected fields",
            ) from None
    return GpuCatalog(gpus, origin=origin)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int) -> GpuCatalog:
    return _parse_catalog(_read_yaml(Path(path)), origin=path)


def load_catalog(path: str | Path | None = None, *, extra: Sequence[str | Path] = ()) -> GpuCatalog:
    """Load the bundled catalog (or the one at ``path``), then merge the files in ``extra`` over it.

    Loaded files are cached by path and modification time, so repeated calls cost nothing.
    """
    base = _load_file(Path(path) if path is not None else data_path())
    for extra_path in extra:
        base = base.merged(_load_file(Path(extra_path)))
    return base


def _load_file(path: Path) -> GpuCatalog:
    try:
        resolved = path.expanduser().resolve()
        mtime_ns = resolved.stat().st_mtime_ns
    except FileNotFoundError:
        raise InputError(f"GPU catalog file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read GPU catalog {path}: {exc.strerror or exc}") from None
    return _load_cached(str(resolved), mtime_ns)


def custom_gpu(
    name: str,
    memory: int | str,
    *,
    base: GpuSpec | None = None,
    source: str = "user",
) -> GpuSpec:
    """A GPU the catalog does not know, or a known one with its memory overridden.

    ``memory`` is bytes or a size string such as ``"79.2GiB"`` / ``"80GB"`` (see
    :func:`gpuplan.units.parse_size`). With ``base``, every other figure (bandwidth, throughput,
    interconnect) is taken from that entry; without it they are unknown.
    """
    memory_bytes = parse_size(memory) if isinstance(memory, str) else int(memory)
    if memory_bytes <= 0:
        raise InputError(f"GPU memory must be positive, got {memory!r}")
    if not name.strip():
        raise InputError("a custom GPU needs a name")
    fields: dict[str, Any]
    if base is not None:
        fields = base.model_dump()
        fields.update(
            name=name,
            aliases=(),
            memory_bytes=memory_bytes,
            memory_bytes_source=source,
            memory_gb=max(base.memory_gb, memory_bytes / GB),
            notes=f"{base.name} with its memory set to {memory_bytes} bytes",
        )
    else:
        fields = {
            "name": name,
            "vendor": "other",
            "segment": "custom",
            "architecture": "unknown",
            "memory_gb": memory_bytes / GB,
            "memory_bytes": memory_bytes,
            "memory_bytes_source": source,
            "interconnect": "unknown",
            "gpus_per_node": 1,
            "source": source,
        }
    return GpuSpec.model_validate(fields)
