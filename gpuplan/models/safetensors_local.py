"""Exact stored bytes of a local safetensors checkpoint, read from the file headers only.

A .safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the tensor data
(https://huggingface.co/docs/safetensors/index#format). The JSON maps each tensor name to its ``dtype``,
``shape`` and ``data_offsets`` ``[begin, end)`` within the data section, plus an optional ``__metadata__`` of
strings. Only the first 8 + N bytes of each file are read: never the tensor data. PyTorch pickles
(``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are never opened, since unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gpuplan.errors import ConfigError, ModelNotFoundError

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_BYTES",
    "SafetensorsFile",
    "SafetensorsSummary",
    "read_safetensors_header",
    "summarize_safetensors",
]

INDEX_FILE = "model.safetensors.index.json"
# The safetensors library refuses headers above 100 MB (safetensors/src/tensor.rs: MAX_HEADER_SIZE =
# 100_000_000); a larger length field means a corrupt file or not a safetensors file at all.
MAX_HEADER_BYTES = 100_000_000
# An index maps tensor names to shard files; the largest (DeepSeek-V3's, 163 shards) is a few MB.
MAX_INDEX_BYTES = 64 * 1024 * 1024

# Bits per element of each dtype safetensors knows (safetensors/src/tensor.rs: enum Dtype, Dtype::bitsize).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class SafetensorsFile(BaseModel):
    """One file's header, summarized: tensor count and exact bytes and elements per dtype."""

    model_config = ConfigDict(frozen=True)

    path: str
    file_bytes: int
    header_bytes: int
    tensor_count: int
    bytes_by_dtype: dict[str, int]
    elements_by_dtype: dict[str, int]
    metadata: dict[str, str] | None = None

    @property
    def data_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


class SafetensorsSummary(BaseModel):
    """A checkpoint's tensors as stored: exact bytes and elements, by dtype and by role."""

    model_config = ConfigDict(frozen=True)

    folder: str
    files: tuple[SafetensorsFile, ...]
    tensor_count: int
    total_bytes: int
    """Bytes of every tensor's data (the data sections of the files, without headers)."""
    total_elements: int
    """Elements over all tensors: the parameter count for unquantized checkpoints. Packed formats store
    several weights per element (GPTQ int32, MXFP4 uint8) and scales as extra elements."""
    bytes_by_dtype: dict[str, int]
    elements_by_dtype: dict[str, int]
    bytes_by_role: dict[str, int]
    index_metadata: dict[str, Any] | None = None


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    """(header JSON, header length, file size) of one .safetensors file; ConfigError names the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ConfigError(
                    f"{path} is {size} bytes: too short for a safetensors file",
                    hint="download the file again",
                )
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES:
                raise ConfigError(
                    f"{path}: header length {length:,} bytes is over the {MAX_HEADER_BYTES:,}-byte limit",
                    hint="the file is corrupt or not a safetensors file",
                )
            if length < 2 or 8 + length > size:
                raise ConfigError(
                    f"{path} is truncated or corrupt: its header claims {length:,} bytes"
                    f" but the file has {size:,}",
                    hint="download the file again (an interrupted download leaves a short file)",
                )
            raw = handle.read(length)
    except FileNotFoundError:
        raise ModelNotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) != length:
        raise ConfigError(f"{path} is truncated: the header ends after {len(raw):,} of {length:,} bytes")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path}: the safetensors header is not valid JSON ({exc})",
            hint="the file is corrupt or not a safetensors file",
        ) from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: the safetensors header is not a JSON object")
    return header, length, size


def _summarize_file(path: Path) -> tuple[SafetensorsFile, dict[str, int]]:
    header, length, size = read_safetensors_header(path)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ConfigError(f"{path}: __metadata__ must map strings to strings")
    data_bytes = size - 8 - length
    by_dtype: dict[str, int] = {}
    elements: dict[str, int] = {}
    per_tensor: dict[str, int] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise ConfigError(f"{path}: tensor {name!r} is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise ConfigError(f"{path}: tensor {name!r} has no dtype")
        bits = DTYPE_BITS.get(dtype)
        if bits is None:
            raise ConfigError(
                f"{path}: tensor {name!r} has dtype {dtype!r}, which gpuplan does not know",
                hint=f"known dtypes: {', '.join(DTYPE_BITS)}",
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ConfigError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ConfigError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
        numel = math.prod(shape)
        stored = offsets[1] - offsets[0]
        if numel * bits % 8 or numel * bits // 8 != stored:
            raise ConfigError(
                f"{path}: tensor {name!r} ({dtype} {shape}) should take {numel * bits / 8:g} bytes"
                f" but its data_offsets span {stored}"
            )
        if offsets[1] > data_bytes:
            raise ConfigError(
                f"{path} is truncated: tensor {name!r} ends at data byte {offsets[1]:,}"
                f" but only {data_bytes:,}"
                " follow the header",
                hint="download the file again (an interrupted download leaves a short file)",
            )
        by_dtype[dtype] = by_dtype.get(dtype, 0) + stored
        elements[dtype] = elements.get(dtype, 0) + numel
        per_tensor[name] = stored
    summary = SafetensorsFile(
        path=str(path),
        file_bytes=size,
        header_bytes=8 + length,
        tensor_count=len(header),
        bytes_by_dtype=by_dtype,
        elements_by_dtype=elements,
        metadata=metadata,
    )
    return summary, per_tensor


_ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "vision",
        re.compile(
            r"(^|\.)(vision_tower|vision_model|visual|vit|image_encoder|multi_modal_projector"
            r"|mm_projector|vision_projection|audio_tower|audio_encoder)\."
        ),
    ),
    ("mtp", re.compile(r"(^|\.)(mtp|nextn)[._]")),
    ("embed", re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embedding)\.")),
    ("lm_head", re.compile(r"(^|\.)(lm_head|embed_out|output)\.")),
    ("layers", re.compile(r"(^|\.)(layers|h|blocks|block|decoder\.layers|layer)\.\d+\.")),
    ("position_embed", re.compile(r"(^|\.)(wpe|embed_positions|position_embeddings)\.")),
    ("norm", re.compile(r"(^|\.)(norm|final_layernorm|ln_f|final_norm)\.")),
)


def tensor_role(name: str) -> str:
    """embed, lm_head, layers, norm, position_embed, vision, mtp or other, from the tensor's name."""
    for role, pattern in _ROLE_PATTERNS:
        if pattern.search(name):
            return role
    return "other"


def _shards(folder: Path) -> tuple[list[Path], dict[str, Any] | None]:
    index = folder / INDEX_FILE
    if index.is_file():
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise ConfigError(f"{index} is over {MAX_INDEX_BYTES:,} bytes: not a safetensors index")
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{index} is not valid JSON ({exc})", hint="download it again") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConfigError(f"{index} has no weight_map of tensor names to file names")
        names = sorted(set(weight_map.values()))
        paths = [folder / name for name in names]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{folder}: {len(missing)} of the {len(paths)} files the index lists are missing"
                f" ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})",
                hint="download every shard into the folder",
            )
        meta = data.get("metadata")
        return paths, meta if isinstance(meta, dict) else None
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file()), None


def summarize_safetensors(path: str | os.PathLike[str]) -> SafetensorsSummary:
    """Bytes and elements of the safetensors tensors in a folder (or of one .safetensors file).

    Uses ``model.safetensors.index.json`` when present (every file it lists must exist), else every
    ``*.safetensors`` file in the folder. Raises ModelNotFoundError when there are none, ConfigError for a
    truncated or corrupt header, an oversized header or an unknown dtype.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no such file or directory: {path}")
    if path.is_file():
        folder, files, index_meta = path.parent, [path], None
    else:
        folder = path
        files, index_meta = _shards(folder)
    if not files:
        pickles = (
            sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        if pickles:
            raise ConfigError(
                f"{folder} holds only PyTorch pickle weights ({', '.join(pickles[:3])}"
                f"{' ...' if len(pickles) > 3 else ''}), which gpuplan does not open",
                hint="loading a pickle runs arbitrary code; convert the checkpoint to safetensors,"
                " or size the"
                " model from its config.json alone",
            )
        raise ModelNotFoundError(f"{folder} holds no .safetensors files")

    summaries: list[SafetensorsFile] = []
    by_dtype: dict[str, int] = {}
    elements: dict[str, int] = {}
    by_role: dict[str, int] = {}
    seen: dict[str, str] = {}
    for file in files:
        summary, per_tensor = _summarize_file(file)
        summaries.append(summary)
        for name, stored in per_tensor.items():
            if name in seen:
                raise ConfigError(f"tensor {name!r} is stored twice: in {seen[name]} and {file.name}")
            seen[name] = file.name
            role = tensor_role(name)
            by_role[role] = by_role.get(role, 0) + stored
        for dtype, n in summary.bytes_by_dtype.items():
            by_dtype[dtype] = by_dtype.get(dtype, 0) + n
        for dtype, n in summary.elements_by_dtype.items():
            elements[dtype] = elements.get(dtype, 0) + n
    return SafetensorsSummary(
        folder=str(folder),
        files=tuple(summaries),
        tensor_count=sum(s.tensor_count for s in summaries),
        total_bytes=sum(by_dtype.values()),
        total_elements=sum(elements.values()),
        bytes_by_dtype=dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        elements_by_dtype=dict(sorted(elements.items(), key=lambda kv: -kv[1])),
        bytes_by_role=dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
        index_metadata=index_meta,
    )
