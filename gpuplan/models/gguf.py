"""A reader of GGUF files (llama.cpp's model format): header, metadata and tensor table, never the weights.

Layout (ggml/docs/gguf.md in ggml-org/llama.cpp, versions 2 and 3; all little-endian):

    magic "GGUF" | uint32 version | uint64 tensor_count | uint64 metadata_kv_count
    metadata: key (string) | uint32 value type | value          (repeated metadata_kv_count times)
    tensor infos: name (string) | uint32 n_dims | uint64 dims[n_dims] | uint32 ggml type | uint64 offset
    padding to ``general.alignment`` (default 32), then the tensor data; each offset is relative to it

A string is a uint64 length and that many UTF-8 bytes; an array is a uint32 element type, a uint64 count and
the elements. Version 1 used 32-bit counts and lengths and is refused.

The file is memory-mapped and only the header pages are touched, so reading a 200 GB model costs a few
megabytes of I/O. Files split by ``llama-gguf-split`` (``name-00001-of-00003.gguf``) are read as one model.

Exact bytes per tensor come from ggml's type table: a tensor of ``n`` elements of a type with block size ``b``
and type size ``s`` stores ``n / b * s`` bytes.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gpuplan.errors import ConfigError, InputError, ModelNotFoundError, UnsupportedModelError
from gpuplan.models.spec import MlaSpec, ModelSpec, MoeSpec, TensorGroup, TensorRole

__all__ = [
    "GGML_TYPES",
    "GgmlType",
    "GgufFile",
    "GgufModel",
    "GgufTensor",
    "ggml_type",
    "ggml_type_by_name",
    "read_gguf",
    "load_gguf_model",
    "gguf_to_spec",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# ggml/docs/gguf.md: "general.alignment ... If not specified, it is assumed to be 32".
DEFAULT_ALIGNMENT = 32
# Sanity bounds that turn a corrupt count into an error instead of a loop over billions of entries. The
# largest published GGUFs hold a few thousand tensors (DeepSeek-V3: 1,025 per split of 163 files is far
# below) and a few hundred metadata keys; tokenizer arrays hold up to ~260k entries (Gemma 3).
MAX_TENSORS = 10_000_000
MAX_KV = 1_000_000
MAX_DIMS = 8  # ggml tensors have at most GGML_MAX_DIMS = 4 dimensions (ggml/include/ggml.h)
# Arrays of strings longer than this are kept as their length only (the tokenizer's tokens and merges).
MAX_KEPT_STRING_ARRAY = 4096


# --- ggml types ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgmlType:
    id: int
    name: str
    block_size: int
    type_size: int

    def nbytes(self, n_elements: int) -> int:
        if n_elements % self.block_size:
            raise ValueError(
                f"{n_elements} elements is not a whole number of {self.name} blocks of {self.block_size}"
            )
        return n_elements // self.block_size * self.type_size

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size


_QK_K = 256  # super-block size of the k-quants and i-quants (ggml/src/ggml-common.h: QK_K)

# (id, name, block size, type size). Ids from ``enum ggml_type`` in ggml/include/ggml.h; block and type sizes
# from ``type_traits`` in ggml/src/ggml.c (blck_size, sizeof(block_*)), the same values as GGML_QUANT_SIZES
# in gguf-py/gguf/constants.py -- read from ggml-org/llama.cpp at commit 0c1e570 (2026-10-01).
# Ids 4 and 5 (Q4_2, Q4_3) and 31-33, 36-38 (the Q4_0_4_4 / IQ4_NL_4_4 repacked layouts) were removed from
# ggml and from GGUF files; a file using them is refused as an unknown type.
_TYPE_TABLE: tuple[tuple[int, str, int, int], ...] = (
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 16),
    (3, "Q4_1", 32, 2 + 2 + 16),
    (6, "Q5_0", 32, 2 + 4 + 16),
    (7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (8, "Q8_0", 32, 2 + 32),
    (9, "Q8_1", 32, 4 + 4 + 32),
    (10, "Q2_K", 256, 2 + 2 + _QK_K // 16 + _QK_K // 4),
    (11, "Q3_K", 256, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    (12, "Q4_K", 256, 2 + 2 + _QK_K // 2 + 12),
    (13, "Q5_K", 256, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
    (14, "Q6_K", 256, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
    (15, "Q8_K", 256, 4 + _QK_K + _QK_K // 8),
    (16, "IQ2_XXS", 256, 2 + _QK_K // 4),
    (17, "IQ2_XS", 256, 2 + _QK_K // 4 + _QK_K // 32),
    (18, "IQ3_XXS", 256, 2 + _QK_K // 4 + _QK_K // 8),
    (19, "IQ1_S", 256, 2 + _QK_K // 8 + _QK_K // 16),
    (20, "IQ4_NL", 32, 2 + 16),
    (21, "IQ3_S", 256, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
    (22, "IQ2_S", 256, 2 + _QK_K // 4 + _QK_K // 16),
    (23, "IQ4_XS", 256, 2 + 2 + _QK_K // 2 + _QK_K // 64),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, _QK_K // 8 + _QK_K // 16 + _QK_K // 32),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 2 + 4 * 13),
    (35, "TQ2_0", 256, 2 + 64),
    (39, "MXFP4", 32, 1 + 16),
    (40, "NVFP4", 64, 4 + 32),
    (41, "Q1_0", 128, 2 + 16),
    (42, "Q2_0", 64, 2 + 16),
)

GGML_TYPES: dict[int, GgmlType] = {t[0]: GgmlType(*t) for t in _TYPE_TABLE}
_TYPES_BY_NAME: dict[str, GgmlType] = {t.name.lower(): t for t in GGML_TYPES.values()}


def ggml_type(type_id: int) -> GgmlType:
    try:
        return GGML_TYPES[type_id]
    except KeyError:
        raise ConfigError(
            f"unknown ggml tensor type {type_id}",
            hint="the file may come from a newer llama.cpp than gpuplan knows, or use a removed type"
            " (Q4_0_4_4 and the like); re-quantize with a current llama-quantize",
        ) from None


def ggml_type_by_name(name: str) -> GgmlType:
    """A ggml type by its llama.cpp name (``q8_0``, ``f16``, ``Q4_K``), case-insensitive."""
    found = _TYPES_BY_NAME.get(name.strip().lower())
    if found is None:
        raise InputError(f"unknown ggml type {name!r}", hint=f"known: {', '.join(sorted(_TYPES_BY_NAME))}")
    return found


# --- metadata value types (ggml/docs/gguf.md: enum gguf_metadata_value_type) --------------------------------

(
    _UINT8,
    _INT8,
    _UINT16,
    _INT16,
    _UINT32,
    _INT32,
    _FLOAT32,
    _BOOL,
    _STRING,
    _ARRAY,
    _UINT64,
    _INT64,
    _FLOAT64,
) = range(13)
_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "B",
    _INT8: "b",
    _UINT16: "H",
    _INT16: "h",
    _UINT32: "I",
    _INT32: "i",
    _FLOAT32: "f",
    _BOOL: "?",
    _UINT64: "Q",
    _INT64: "q",
    _FLOAT64: "d",
}


class StringArray(BaseModel):
    """A long array of strings (the tokenizer's vocabulary), kept as its length only."""

    model_config = ConfigDict(frozen=True)

    length: int

    def __len__(self) -> int:
        return self.length


class GgufTensor(BaseModel):
    """One entry of the tensor table; ``dims`` in ggml order: dims[0] is the contiguous (input) dimension."""

    model_config = ConfigDict(frozen=True)

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int
    """Offset of the data from the start of the data section of its file."""
    nbytes: int
    file_index: int = 0

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id].name

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """The shape as PyTorch orders it (outermost first): (out_features, in_features) for a matrix."""
        return tuple(reversed(self.dims))


class GgufFile(BaseModel):
    """What one .gguf file declares, without its tensor data."""

    model_config = ConfigDict(frozen=True)

    path: str
    version: int
    file_bytes: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: tuple[GgufTensor, ...]

    @property
    def tensor_data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


# --- reading ---------------------------------------------------------------------------------------------


class _Cursor:
    """Bounds-checked little-endian reads; every overrun becomes a ConfigError naming the file."""

    def __init__(self, buf: Any, size: int, label: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.label = label

    def fail(self, what: str) -> ConfigError:
        return ConfigError(
            f"{self.label} is truncated or corrupt: {what} at byte {self.pos:,}",
            hint="download the file again (an interrupted download leaves a short file)",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file ({self.size:,} bytes)")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def string(self, what: str, *, keep: bool = True) -> str:
        length = self.u64(f"length of {what}")
        self.need(length, what)
        start = self.pos
        self.pos += length
        if not keep:
            return ""
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def value(self, value_type: int, what: str) -> Any:
        fmt = _SCALAR_FORMATS.get(value_type)
        if fmt is not None:
            return self.unpack(fmt, what)
        if value_type == _STRING:
            return self.string(what)
        if value_type == _ARRAY:
            item_type = self.u32(f"element type of {what}")
            count = self.u64(f"length of {what}")
            return self.array(item_type, count, what)
        raise self.fail(f"{what} has unknown value type {value_type}")

    def array(self, item_type: int, count: int, what: str) -> Any:
        fmt = _SCALAR_FORMATS.get(item_type)
        if fmt is not None:
            n = struct.calcsize("<" + fmt)
            self.need(count * n, what)
            values = struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos) if count else ()
            self.pos += count * n
            return list(values)
        if item_type == _STRING:
            keep = count <= MAX_KEPT_STRING_ARRAY
            # Each string holds at least its 8-byte length: a larger count than the file can hold is corrupt.
            self.need(count * 8, what)
            items = [self.string(f"{what}[{i}]", keep=keep) for i in range(count)]
            return items if keep else StringArray(length=count)
        if item_type == _ARRAY:
            self.need(count * 12, what)
            return [
                self.array(self.u32(f"{what}[{i}] type"), self.u64(f"{what}[{i}] length"), f"{what}[{i}]")
                for i in range(count)
            ]
        raise self.fail(f"{what} has unknown element type {item_type}")


def _read_one(path: Path, *, file_index: int = 0) -> GgufFile:
    label = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelNotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    if size < 24:
        raise ConfigError(
            f"{label} is {size} bytes: too short for a GGUF file", hint="download the file again"
        )
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size, label, str(path), file_index)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse(buf: Any, size: int, label: str, path: str, file_index: int) -> GgufFile:
    cur = _Cursor(buf, size, label)
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        hint = (
            "this looks like a safetensors file"
            if bytes(buf[8:9]) == b"{"
            else "pass a .gguf file converted by llama.cpp's convert_hf_to_gguf.py"
        )
        raise ConfigError(f"{label} is not a GGUF file (magic {magic!r}, expected b'GGUF')", hint=hint)
    cur.pos = 4
    version = cur.u32("version")
    if version == 1:
        raise ConfigError(
            f"{label} is GGUF version 1, which gpuplan does not read",
            hint="re-convert the model with a current llama.cpp (GGUF v3)",
        )
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise ConfigError(
                f"{label} is a big-endian GGUF file, which gpuplan does not read",
                hint="use the little-endian file (gguf-convert-endian converts it)",
            )
        raise ConfigError(f"{label} has GGUF version {version}; gpuplan reads versions 2 and 3")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise cur.fail(f"implausible counts ({n_tensors:,} tensors, {n_kv:,} metadata keys)")

    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        value_type = cur.u32(f"type of {key!r}")
        metadata[key] = cur.value(value_type, f"value of {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or alignment <= 0
        or alignment & (alignment - 1)
        or alignment % 8
    ):
        raise ConfigError(
            f"{label}: general.alignment must be a power of two and a multiple of 8, got {alignment!r}"
        )

    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for i in range(n_tensors):
        name = cur.string(f"name of tensor #{i}")
        n_dims = cur.u32(f"dimension count of {name!r}")
        if n_dims == 0 or n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(cur.u64(f"dimension of {name!r}") for _ in range(n_dims))
        type_id = cur.u32(f"type of {name!r}")
        offset = cur.u64(f"offset of {name!r}")
        infos.append((name, dims, type_id, offset))

    data_offset = -(-cur.pos // alignment) * alignment
    tensors: list[GgufTensor] = []
    for name, dims, type_id, offset in infos:
        kind = GGML_TYPES.get(type_id)
        if kind is None:
            raise ConfigError(
                f"{label}: tensor {name!r} has unknown ggml type {type_id}",
                hint="the file may come from a newer llama.cpp than gpuplan knows, or use a removed type"
                " (Q4_0_4_4 and the like); re-quantize with a current llama-quantize",
            )
        if dims[0] % kind.block_size:
            raise ConfigError(
                f"{label}: tensor {name!r} has {dims[0]} columns, not a multiple of the"
                f" {kind.name} block size {kind.block_size}"
            )
        nbytes = kind.nbytes(math.prod(dims))
        if offset % alignment:
            raise ConfigError(
                f"{label}: tensor {name!r} starts at offset {offset}, not aligned to {alignment}"
            )
        if data_offset + offset + nbytes > size:
            raise ConfigError(
                f"{label} is truncated: tensor {name!r} ends at byte {data_offset + offset + nbytes:,}"
                f" but the file has {size:,}",
                hint="download the file again (an interrupted download leaves a short file)",
            )
        tensors.append(
            GgufTensor(
                name=name, dims=dims, type_id=type_id, offset=offset, nbytes=nbytes, file_index=file_index
            )
        )
    return GgufFile(
        path=path,
        version=version,
        file_bytes=size,
        alignment=alignment,
        data_offset=data_offset,
        metadata=metadata,
        tensors=tuple(tensors),
    )


# llama.cpp names the parts of a split model "%s-%05d-of-%05d.gguf" (src/llama.cpp: llama_split_path).
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _split_paths(first: Path, count: int) -> list[Path]:
    match = _SPLIT_NAME.match(first.name)
    if match is None:
        raise ConfigError(
            f"{first} declares {count} splits but its name is not of the form NAME-00001-of-0000N.gguf",
            hint="keep the names llama-gguf-split gave the parts",
        )
    prefix = match["prefix"]
    return [first.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_gguf(path: str | os.PathLike[str]) -> list[GgufFile]:
    """Read a GGUF file's header (every part of a split model, given any part). Raises ConfigError."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = _pick_in_folder(path)
    first = _read_one(path)
    count = first.metadata.get("split.count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"{path}: split.count must be a positive integer, got {count!r}")
    if count == 1:
        return [first]
    files: list[GgufFile] = []
    for index, part in enumerate(_split_paths(path, count)):
        if part == path:
            files.append(
                first.model_copy(
                    update={
                        "tensors": tuple(t.model_copy(update={"file_index": index}) for t in first.tensors)
                    }
                )
            )
            continue
        if not part.is_file():
            raise ModelNotFoundError(
                f"{part.name} is missing: {path.name} is part of a model split in {count} files",
                hint="download every part into the same folder",
            )
        files.append(_read_one(part, file_index=index))
    files.sort(key=lambda f: f.metadata.get("split.no", 0))
    declared = files[0].metadata.get("split.tensors.count")
    total = sum(len(f.tensors) for f in files)
    if isinstance(declared, int) and declared != total:
        raise ConfigError(f"{path}: the splits hold {total} tensors but split.tensors.count says {declared}")
    return files


def _pick_in_folder(folder: Path) -> Path:
    found = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    models = [p for p in found if not p.name.startswith(("mmproj", "ggml-vocab"))]
    firsts = [
        p for p in models if not _SPLIT_NAME.match(p.name) or _SPLIT_NAME.match(p.name)["no"] == "00001"
    ]
    if len(firsts) == 1:
        return firsts[0]
    if not firsts:
        raise ModelNotFoundError(f"{folder} holds no .gguf model file")
    names = ", ".join(p.name for p in firsts[:6]) + (" ..." if len(firsts) > 6 else "")
    raise InputError(
        f"{folder} holds {len(firsts)} GGUF models ({names})", hint="pass the path of one .gguf file"
    )


# --- the model: metadata + tensor table -> ModelSpec ------------------------------------------------------


class GgufModel(BaseModel):
    """A GGUF model: its files, the architecture read from the metadata, and the exact stored bytes."""

    model_config = ConfigDict(frozen=True)

    path: str
    architecture: str
    files: tuple[GgufFile, ...]
    tensors: tuple[GgufTensor, ...]
    spec: ModelSpec
    hparams: dict[str, Any]
    """The ``{arch}.*`` keys without their prefix (``block_count``, ``attention.head_count_kv`` ...)."""
    name: str | None = None
    file_type: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return self.files[0].metadata

    @property
    def weights_bytes(self) -> int:
        """Bytes of every tensor's data, as stored (and as llama.cpp loads them)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return sum(f.file_bytes for f in self.files)

    def bytes_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type_name] = out.get(t.type_name, 0) + t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def tensor(self, name: str) -> GgufTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def n_layer(self) -> int:
        return self.spec.num_hidden_layers


# llama.cpp's file types (enum llama_ftype in include/llama.h), for display only.
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}

_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")


def load_gguf_model(path: str | os.PathLike[str]) -> GgufModel:
    """Read a GGUF model and describe it as a ModelSpec with its exact tensor layout."""
    files = read_gguf(path)
    tensors = tuple(t for f in files for t in f.tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{path}: tensor {dup!r} appears twice")
    meta = files[0].metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"{path}: general.architecture is missing", hint="is this a llama.cpp model file?")
    prefix = arch + "."
    hparams = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
    spec = gguf_to_spec(arch, hparams, tensors, meta, label=str(path))
    file_type = meta.get("general.file_type")
    return GgufModel(
        path=str(path),
        architecture=arch,
        files=tuple(files),
        tensors=tensors,
        spec=spec,
        hparams=hparams,
        name=meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        file_type=_FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
    )


def _scalar(
    hp: dict[str, Any], key: str, label: str, *, default: Any = None, per_layer: int | None = None
) -> Any:
    """An integer hyperparameter; arrays (per-layer values) are returned as lists of ``per_layer`` entries."""
    value = hp.get(key, default)
    if value is None:
        return None
    if isinstance(value, list):
        if per_layer is None:
            raise ConfigError(f"{label}: {key} is an array where a single number was expected")
        if len(value) < per_layer or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise ConfigError(f"{label}: {key} must hold {per_layer} non-negative integers")
        return [int(v) for v in value[:per_layer]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ConfigError(f"{label}: {key} must be a non-negative integer, got {value!r}")
    return int(value)


def _max(value: int | list[int] | None) -> int:
    if value is None:
        return 0
    return max(value) if isinstance(value, list) else value


def _per_layer(value: int | list[int], n_layer: int) -> list[int]:
    return list(value) if isinstance(value, list) else [value] * n_layer


# SWA layer patterns llama.cpp applies when the file has no sliding_window_pattern key, by architecture
# (src/models/<arch>.cpp: load_swa_pattern(ml, N) -> llama_hparams::set_swa_pattern, where layer il slides
# when il % N < N - 1), with the window it assumes when the file states none.
_SWA_DEFAULTS: dict[str, tuple[int, int | None]] = {
    "gemma2": (2, 4096),  # src/models/gemma2.cpp: n_swa = 4096, pattern 2
    "gemma3": (6, None),  # src/models/gemma3.cpp: pattern 6, only when sliding_window > 0
    "gpt-oss": (2, None),  # src/models/openai-moe.cpp: pattern 2
    "cohere2": (4, None),  # src/models/cohere2.cpp: pattern 4
    "llama4": (4, 8192),  # src/models/llama4.cpp: chunked attention, 8192, pattern 4 (unless window 0)
}


def _layer_windows(
    arch: str, hp: dict[str, Any], n_layer: int, label: str, notes: list[str]
) -> tuple[int | None, ...]:
    window = hp.get("attention.sliding_window")
    pattern = hp.get("attention.sliding_window_pattern")
    default = _SWA_DEFAULTS.get(arch)
    if arch == "phi3":
        # src/models/phi3.cpp: "Phi SWA is currently disabled" -- every layer attends to the full context.
        return (None,) * n_layer
    if window is None and default is not None and default[1] is not None:
        window = default[1]
    if window is None or window == 0:
        return (None,) * n_layer
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ConfigError(f"{label}: attention.sliding_window must be a non-negative integer, got {window!r}")
    if isinstance(pattern, list):
        if len(pattern) < n_layer:
            raise ConfigError(
                f"{label}: attention.sliding_window_pattern has {len(pattern)} entries for {n_layer} layers"
            )
        return tuple(window if bool(p) else None for p in pattern[:n_layer])
    n_pattern = (
        pattern
        if isinstance(pattern, int) and not isinstance(pattern, bool)
        else (default[0] if default is not None else None)
    )
    if n_pattern is None:
        notes.append(
            f"the file states a sliding window of {window} tokens but no layer pattern gpuplan knows"
            f" for '{arch}': every layer is counted with the full context"
        )
        return (None,) * n_layer
    return tuple(
        window if n_pattern == 0 or il % n_pattern < n_pattern - 1 else None for il in range(n_layer)
    )


def _role(name: str) -> TensorRole:
    base = _BLOCK_NAME.sub(r"\2", name)
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TensorRole.EMBEDDING
    if name.startswith("position_embd."):
        return TensorRole.POSITION_EMBEDDING
    if name == "output.weight":
        return TensorRole.LM_HEAD
    if name.endswith(".bias"):
        return TensorRole.BIAS
    if "norm" in base:
        return TensorRole.NORM
    if base.startswith(("ffn_gate_inp.", "exp_probs_b")):
        return TensorRole.ROUTER
    if re.match(r"ffn_(gate|up|down|gate_up)_exps\.", base):
        return TensorRole.EXPERT_LINEAR
    if name.startswith("blk.") and base.endswith(".weight") and base.startswith(("attn_", "ffn_")):
        return TensorRole.LINEAR
    return TensorRole.OTHER


def _tensor_groups(tensors: tuple[GgufTensor, ...], n_layer_main: int) -> tuple[TensorGroup, ...]:
    """Group ``blk.N.x`` tensors of equal shape across layers; tensors of MTP layers (N >= n_layer_main)
    are marked not loaded, as llama.cpp skips them unless speculative decoding asks for them."""
    groups: dict[tuple[str, tuple[int, ...], TensorRole, bool], int] = {}
    for t in tensors:
        match = _BLOCK_NAME.match(t.name)
        loaded = True
        if match:
            key_name = f"blk.*.{match[2]}"
            loaded = int(match[1]) < n_layer_main
        else:
            key_name = t.name
        key = (key_name, t.torch_shape, _role(t.name), loaded)
        groups[key] = groups.get(key, 0) + 1
    return tuple(
        TensorGroup(name=n, shape=s, count=c, role=r, loaded=ld) for (n, s, r, ld), c in groups.items()
    )


def gguf_to_spec(
    arch: str, hp: dict[str, Any], tensors: tuple[GgufTensor, ...], meta: dict[str, Any], *, label: str
) -> ModelSpec:
    """Map llama.cpp's architecture keys (gguf-py/gguf/constants.py: Keys.LLM, Keys.Attention) to a ModelSpec
    whose tensor groups are the file's own tensors, so parameter counts are exact."""
    notes: list[str] = []
    n_layer_all, n_nextn = _layer_counts(arch, hp, label)
    n_layer = n_layer_all - n_nextn
    n_embd = _scalar(hp, "embedding_length", label)
    if not n_embd:
        raise ConfigError(f"{label}: {arch}.embedding_length is missing")
    heads = _attention_heads(arch, hp, n_layer_all, n_embd, label, notes)
    vocab = _vocab_size(arch, hp, tensors, meta, label)
    names = {t.name for t in tensors}
    n_ff = _scalar(hp, "feed_forward_length", label, per_layer=n_layer_all)
    moe = _moe_spec(hp, tensors, n_layer_all, n_layer, label)
    intermediate = _max(n_ff) or (
        moe.expert_intermediate_size
        if moe is not None
        else _scalar(hp, "expert_feed_forward_length", label, default=0) or 0
    )
    if not intermediate:
        raise ConfigError(f"{label}: {arch}.feed_forward_length is missing")
    mla, heads = _mla_spec(hp, heads, label, notes)
    windows = _layer_windows(arch, hp, n_layer, label, notes)
    context = _scalar(hp, "context_length", label, default=None)
    types = sorted({t.type_name for t in tensors})
    notes.append(f"weights stored as GGUF tensors of type {', '.join(types)}")
    if n_nextn:
        notes.append(
            f"{n_nextn} multi-token-prediction layer(s) in the file are not loaded for plain decoding"
        )

    try:
        return ModelSpec(
            model_type=arch,
            architectures=(arch,),
            num_hidden_layers=n_layer,
            hidden_size=n_embd,
            vocab_size=vocab,
            num_attention_heads=heads.n_head,
            num_key_value_heads=heads.n_head_kv,
            head_dim=heads.head_dim,
            v_head_dim=heads.v_head_dim,
            intermediate_size=intermediate,
            ffn_gated=_ffn_gated(names),
            mla=mla,
            moe=moe,
            layer_windows=windows,
            tie_word_embeddings="output.weight" not in names,
            max_position_embeddings=context or None,
            native_dtype=None,
            mtp_layers=n_nextn,
            norm_kind="layer" if _has_block_tensor(names, "attn_norm.bias") else "rms",
            tensors=_tensor_groups(tensors, n_layer),
            notes=tuple(notes),
        )
    except ValueError as exc:  # pydantic's ValidationError derives from ValueError
        raise ConfigError(f"{label}: the metadata describes an impossible model: {exc}") from exc


def _layer_counts(arch: str, hp: dict[str, Any], label: str) -> tuple[int, int]:
    """(blocks in the file, multi-token-prediction blocks among them): decoding runs the others."""
    n_layer_all = _scalar(hp, "block_count", label)
    if not n_layer_all:
        raise ConfigError(f"{label}: {arch}.block_count is missing", hint="is this a language model GGUF?")
    n_nextn = _scalar(hp, "nextn_predict_layers", label, default=0) or 0
    if n_layer_all - n_nextn <= 0:
        raise ConfigError(f"{label}: nextn_predict_layers ({n_nextn}) leaves no decoder layers")
    return n_layer_all, n_nextn


@dataclass(frozen=True)
class _Heads:
    """Attention widths: the largest head counts of any layer, and the per-head widths of K and V."""

    n_head: int
    n_head_kv: int
    head_dim: int
    v_head_dim: int


def _attention_heads(
    arch: str, hp: dict[str, Any], n_layer_all: int, n_embd: int, label: str, notes: list[str]
) -> _Heads:
    n_head = _scalar(hp, "attention.head_count", label, per_layer=n_layer_all)
    n_head_max = _max(n_head)
    if not n_head_max:
        raise UnsupportedModelError(
            f"{label}: '{arch}' has no attention heads (a recurrent model such as Mamba or RWKV)",
            hint="gpuplan models attention-based decoders",
        )
    n_head_kv = _scalar(hp, "attention.head_count_kv", label, default=n_head, per_layer=n_layer_all)
    if isinstance(n_head, list) or isinstance(n_head_kv, list):
        notes.append("head counts vary per layer; the spec shows the largest, the KV cache uses each layer's")
    head_dim = _scalar(hp, "attention.key_length", label) or (
        n_embd // n_head_max if n_embd % n_head_max == 0 else None
    )
    if head_dim is None:
        raise ConfigError(
            f"{label}: embedding_length {n_embd} is not divisible by {n_head_max} heads"
            " and attention.key_length is missing"
        )
    v_head_dim = _scalar(hp, "attention.value_length", label) or head_dim
    return _Heads(n_head_max, _max(n_head_kv) or n_head_max, head_dim, v_head_dim)


def _vocab_size(
    arch: str, hp: dict[str, Any], tensors: tuple[GgufTensor, ...], meta: dict[str, Any], label: str
) -> int:
    """The vocabulary: the architecture's key, else the tokenizer's token list, else token_embd's width."""
    vocab = _scalar(hp, "vocab_size", label)
    if not vocab:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, (list, StringArray)) else None
    if not vocab:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        vocab = embd.dims[-1] if embd is not None else None
    if not vocab:
        raise ConfigError(
            f"{label}: cannot tell the vocabulary size (no {arch}.vocab_size, tokenizer or token_embd.weight)"
        )
    return vocab


def _moe_spec(
    hp: dict[str, Any], tensors: tuple[GgufTensor, ...], n_layer_all: int, n_layer: int, label: str
) -> MoeSpec | None:
    """The experts, when expert_count is set: widths from the keys, else from the expert tensors' shapes."""
    n_expert = _scalar(hp, "expert_count", label, default=0) or 0
    n_ff_exp = _scalar(hp, "expert_feed_forward_length", label, default=0) or 0
    if not n_expert:
        return None
    used = _scalar(hp, "expert_used_count", label, per_layer=n_layer_all)
    moe_layers = {
        int(m[1]) for t in tensors if (m := _BLOCK_NAME.match(t.name)) and "_exps." in m[2] and int(m[1]) < n_layer
    }
    if not n_ff_exp:
        down = next((t for t in tensors if t.name.endswith("ffn_down_exps.weight")), None)
        n_ff_exp = down.dims[0] if down is not None else 0
    if not moe_layers or not n_ff_exp or not _max(used):
        raise ConfigError(
            f"{label}: expert_count is {n_expert} but the expert tensors or expert_used_count are missing"
        )
    n_shared = _scalar(hp, "expert_shared_count", label, default=0) or 0
    shared_width = _scalar(hp, "expert_shared_feed_forward_length", label, default=0) or 0
    if n_shared and not shared_width:
        shexp = next((t for t in tensors if t.name.endswith("ffn_down_shexp.weight")), None)
        shared_width = shexp.dims[0] if shexp is not None else n_ff_exp * n_shared
    return MoeSpec(
        num_experts=n_expert,
        experts_per_token=_max(used),
        expert_intermediate_size=n_ff_exp,
        num_shared_experts=n_shared,
        shared_expert_intermediate_size=shared_width,
        num_moe_layers=len(moe_layers),
        num_dense_layers=n_layer - len(moe_layers),
    )


def _mla_spec(hp: dict[str, Any], heads: _Heads, label: str, notes: list[str]) -> tuple[MlaSpec | None, _Heads]:
    """Multi-head latent attention, when kv_lora_rank is set, and the head widths it implies."""
    kv_lora = _scalar(hp, "attention.kv_lora_rank", label, default=0) or 0
    if not kv_lora:
        return None, heads
    rope_dim = _scalar(hp, "rope.dimension_count", label, default=0) or 0
    # DeepSeek-V2/V3 GGUFs (convert_hf_to_gguf.py, DeepseekV2Model): key_length_mla and
    # value_length_mla hold the per-head q/k (nope + rope) and v widths when key_length holds the
    # latent (kv_lora_rank + rope).
    k_mla = _scalar(hp, "attention.key_length_mla", label, default=0) or 0
    v_mla = _scalar(hp, "attention.value_length_mla", label, default=0) or 0
    qk_dim = k_mla or heads.head_dim
    v_dim = v_mla or heads.v_head_dim
    if not (rope_dim and qk_dim > rope_dim):
        notes.append("kv_lora_rank is set but the MLA head widths could not be read; MLA is not modelled")
        return None, heads
    mla = MlaSpec(
        kv_lora_rank=kv_lora,
        q_lora_rank=_scalar(hp, "attention.q_lora_rank", label, default=0) or None,
        qk_nope_head_dim=qk_dim - rope_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=v_dim,
    )
    return mla, dataclasses.replace(heads, head_dim=qk_dim, v_head_dim=v_dim)


def _has_block_tensor(names: set[str], suffix: str) -> bool:
    return any(n.endswith(suffix) and n.startswith("blk.") for n in names)


def _ffn_gated(names: set[str]) -> bool:
    """A gated (SwiGLU-style) feed-forward: a gate tensor, or no up projection at all."""
    gates = ("ffn_gate.weight", "ffn_gate_exps.weight", "ffn_gate_up_exps.weight", "ffn_gate_shexp.weight")
    if any(_has_block_tensor(names, suffix) for suffix in gates):
        return True
    return not (_has_block_tensor(names, "ffn_up.weight") or _has_block_tensor(names, "ffn_up_exps.weight"))
