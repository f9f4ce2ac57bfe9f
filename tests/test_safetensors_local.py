"""gpuplan.models.safetensors_local on safetensors files built byte by byte."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from gpuplan.errors import ConfigError, ModelNotFoundError
from gpuplan.models.safetensors_local import (
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    read_safetensors_header,
    summarize_safetensors,
    tensor_role,
)


def st_file(
    path: Path,
    tensors: dict[str, tuple[str, list[int]]],
    *,
    metadata: dict[str, str] | None = None,
    pad_header: int = 0,
    data_fill: bytes = b"\x00",
) -> int:
    """Write a .safetensors file and return the size of its data section (what the summary must report)."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * pad_header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data_fill * offset)
    return offset


def data_section(path: Path) -> int:
    blob = path.read_bytes()
    return len(blob) - 8 - struct.unpack("<Q", blob[:8])[0]


LLAMA_TINY = {
    "model.embed_tokens.weight": ("BF16", [128, 16]),
    "model.layers.0.self_attn.q_proj.weight": ("BF16", [16, 16]),
    "model.layers.0.self_attn.k_proj.weight": ("BF16", [8, 16]),
    "model.layers.0.mlp.down_proj.weight": ("BF16", [16, 32]),
    "model.layers.0.input_layernorm.weight": ("F32", [16]),
    "model.layers.1.mlp.gate_proj.weight": ("F8_E4M3", [32, 16]),
    "model.layers.1.mlp.gate_proj.weight_scale": ("F32", [32]),
    "model.norm.weight": ("F32", [16]),
    "lm_head.weight": ("BF16", [128, 16]),
}


def test_single_file_bytes_equal_the_data_section(tmp_path: Path) -> None:
    data = st_file(tmp_path / "model.safetensors", LLAMA_TINY, metadata={"format": "pt"})

    summary = summarize_safetensors(tmp_path)

    assert summary.total_bytes == data == data_section(tmp_path / "model.safetensors")
    assert summary.tensor_count == len(LLAMA_TINY)
    assert summary.bytes_by_dtype == {
        "BF16": 2 * (128 * 16 + 16 * 16 + 8 * 16 + 16 * 32 + 128 * 16),
        "F8_E4M3": 32 * 16,
        "F32": 4 * (16 + 32 + 16),
    }
    assert summary.elements_by_dtype["F8_E4M3"] == 512
    assert summary.total_elements == sum(math.prod(shape) for _, shape in LLAMA_TINY.values())
    assert summary.bytes_by_role == {
        "embed": 2 * 128 * 16,
        "lm_head": 2 * 128 * 16,
        "layers": 2 * (16 * 16 + 8 * 16 + 16 * 32) + 4 * 16 + 32 * 16 + 4 * 32,
        "norm": 4 * 16,
    }
    assert summary.files[0].metadata == {"format": "pt"}
    assert summary.files[0].header_bytes == 8 + (
        len((tmp_path / "model.safetensors").read_bytes()) - 8 - data
    )


def test_every_known_dtype_including_sub_byte(tmp_path: Path) -> None:
    tensors = {f"t_{dtype}": (dtype, [4, 8]) for dtype in DTYPE_BITS}
    data = st_file(tmp_path / "model.safetensors", tensors)

    summary = summarize_safetensors(tmp_path / "model.safetensors")

    assert summary.total_bytes == data == data_section(tmp_path / "model.safetensors")
    assert summary.bytes_by_dtype["F4"] == 16  # 32 four-bit values
    assert summary.bytes_by_dtype["F6_E2M3"] == 24
    assert summary.bytes_by_dtype["C64"] == 256


def test_sharded_checkpoint_with_index(tmp_path: Path) -> None:
    first = {
        "model.embed_tokens.weight": ("BF16", [64, 8]),
        "model.layers.0.mlp.up_proj.qweight": ("I32", [2, 32]),
    }
    second = {"model.layers.1.mlp.up_proj.scales": ("F16", [1, 32]), "lm_head.weight": ("BF16", [64, 8])}
    d1 = st_file(tmp_path / "model-00001-of-00002.safetensors", first)
    d2 = st_file(tmp_path / "model-00002-of-00002.safetensors", second)
    weight_map = {
        **dict.fromkeys(first, "model-00001-of-00002.safetensors"),
        **dict.fromkeys(second, "model-00002-of-00002.safetensors"),
    }
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": d1 + d2}, "weight_map": weight_map})
    )
    st_file(tmp_path / "stray.safetensors", {"x": ("F32", [4])})  # not in the index: ignored

    summary = summarize_safetensors(tmp_path)

    assert summary.total_bytes == d1 + d2 == summary.index_metadata["total_size"]  # type: ignore[index]
    assert [Path(f.path).name for f in summary.files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert summary.bytes_by_dtype == {"BF16": 2 * 2 * 64 * 8, "I32": 4 * 64, "F16": 2 * 32}


def test_folder_without_index_reads_every_file(tmp_path: Path) -> None:
    d1 = st_file(tmp_path / "a.safetensors", {"model.layers.0.w": ("F16", [3, 5])})
    d2 = st_file(tmp_path / "b.safetensors", {"model.layers.1.w": ("F16", [3, 5])})

    assert summarize_safetensors(tmp_path).total_bytes == d1 + d2 == 60


def test_duplicate_tensor_across_files(tmp_path: Path) -> None:
    st_file(tmp_path / "a.safetensors", {"w": ("F16", [2])})
    st_file(tmp_path / "b.safetensors", {"w": ("F16", [2])})

    with pytest.raises(ConfigError, match="tensor 'w' is stored twice: in a.safetensors and b.safetensors"):
        summarize_safetensors(tmp_path)


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    st_file(tmp_path / "model-00001-of-00002.safetensors", {"w": ("F16", [2])})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps(
            {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
        )
    )

    with pytest.raises(ModelNotFoundError, match="1 of the 2 files the index lists are missing"):
        summarize_safetensors(tmp_path)


def test_bad_index(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(ConfigError, match="model.safetensors.index.json is not valid JSON"):
        summarize_safetensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    with pytest.raises(ConfigError, match="has no weight_map"):
        summarize_safetensors(tmp_path)


# --- no safetensors ---------------------------------------------------------------------------------------


def test_only_pickles_are_refused_without_opening_them(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02 would run code if unpickled")
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(ConfigError) as caught:
        summarize_safetensors(tmp_path)

    assert caught.value.message == (
        f"{tmp_path} holds only PyTorch pickle weights (pytorch_model.bin), which gpuplan does not open"
    )
    assert "arbitrary code" in (caught.value.hint or "")


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="holds no .safetensors files"):
        summarize_safetensors(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        summarize_safetensors(tmp_path / "nope")


# --- corrupt files ----------------------------------------------------------------------------------------


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    st_file(path, LLAMA_TINY)
    blob = path.read_bytes()
    path.write_bytes(blob[:40])

    with pytest.raises(ConfigError, match=r"model.safetensors is truncated or corrupt: its header claims"):
        summarize_safetensors(tmp_path)


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    st_file(path, LLAMA_TINY)
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(
        ConfigError, match=r"model.safetensors is truncated: tensor 'lm_head.weight' ends at data byte"
    ):
        summarize_safetensors(tmp_path)


def test_short_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConfigError, match="is 2 bytes: too short for a safetensors file"):
        summarize_safetensors(tmp_path)


def test_header_over_100_mb_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")

    with pytest.raises(
        ConfigError, match="header length 100,000,001 bytes is over the 100,000,000-byte limit"
    ):
        read_safetensors_header(path)


def test_header_not_json(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{{{{")
    with pytest.raises(ConfigError, match="the safetensors header is not valid JSON"):
        summarize_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(ConfigError, match="is not a JSON object"):
        summarize_safetensors(path)


def test_unknown_dtype(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 3]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 3)

    with pytest.raises(ConfigError, match="tensor 'w' has dtype 'F12', which gpuplan does not know"):
        summarize_safetensors(tmp_path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F16", "shape": [2, -1], "data_offsets": [0, 4]}, "malformed shape"),
        ({"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}, "malformed data_offsets"),
        (
            {"dtype": "F16", "shape": [2], "data_offsets": [0, 6]},
            r"should take 4 bytes but its data_offsets span 6",
        ),
        ({"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}, r"should take 1.5 bytes"),
        ({"shape": [2], "data_offsets": [0, 4]}, "has no dtype"),
        ([1, 2], "is not described by an object"),
    ],
)
def test_malformed_entries(tmp_path: Path, entry: object, message: str) -> None:
    header = json.dumps({"w": entry}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)

    with pytest.raises(ConfigError, match=message):
        summarize_safetensors(tmp_path)


def test_bad_metadata(tmp_path: Path) -> None:
    header = json.dumps({"__metadata__": {"format": 1}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ConfigError, match="__metadata__ must map strings to strings"):
        summarize_safetensors(tmp_path)


def test_only_the_header_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.safetensors"
    data = st_file(path, {"model.layers.0.w": ("F32", [256, 1024])})
    reads: list[int] = []
    real_open = open

    def spy_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real_open(file, mode, *args, **kwargs)
        if str(file) == str(path):
            real_read = handle.read

            def read(n: int = -1) -> bytes:
                reads.append(n)
                return real_read(n)

            handle.read = read  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr("builtins.open", spy_open)
    summary = summarize_safetensors(path)

    assert summary.total_bytes == data == 1 << 20
    assert sum(reads) < 200 and all(n >= 0 for n in reads)


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("model.embed_tokens.weight", "embed"),
        ("transformer.wte.weight", "embed"),
        ("lm_head.weight", "lm_head"),
        ("model.layers.3.self_attn.q_proj.weight", "layers"),
        ("transformer.h.11.attn.c_attn.weight", "layers"),
        ("model.norm.weight", "norm"),
        ("model.vision_tower.blocks.0.attn.qkv.weight", "vision"),
        ("model.layers.61.mtp.eh_proj.weight", "mtp"),
        ("rotary_emb.inv_freq", "other"),
    ],
)
def test_roles(name: str, role: str) -> None:
    assert tensor_role(name) == role
