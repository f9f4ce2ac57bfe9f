"""gpuplan.models.gguf (the GGUF reader) and gpuplan.engines.llamacpp (llama.cpp's memory) on GGUF files
written byte by byte. Files of real models' shapes are sparse: the header is written, the data section is a
hole, so a 4.5 GB model costs a few kilobytes of disk."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest

from gpuplan.engines.llamacpp import LLAMACPP_CUDA_RUNTIME_BYTES, LlamaCppSettings, estimate_llamacpp
from gpuplan.errors import ConfigError, InputError, ModelNotFoundError, UnsupportedModelError
from gpuplan.models.gguf import GGML_TYPES, ggml_type, ggml_type_by_name, load_gguf_model, read_gguf
from gpuplan.models.spec import TensorRole
from gpuplan.units import MiB

# --- a GGUF writer (ggml/docs/gguf.md) --------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {
    U8: "B",
    I8: "b",
    U16: "H",
    I16: "h",
    U32: "I",
    I32: "i",
    F32: "f",
    BOOL: "?",
    U64: "Q",
    I64: "q",
    F64: "d",
}


def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(kind: int, value: Any) -> bytes:
    if kind in _FMT:
        return struct.pack("<" + _FMT[kind], value)
    if kind == STR:
        return _str(value)
    item_kind, items = value
    return struct.pack("<IQ", item_kind, len(items)) + b"".join(_value(item_kind, item) for item in items)


def _infer(value: Any) -> tuple[int, Any]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, int):
        return U32, value
    if isinstance(value, float):
        return F32, value
    if isinstance(value, str):
        return STR, value
    if isinstance(value, list):
        kind = STR if value and isinstance(value[0], str) else I32
        return ARR, (kind, value)
    raise TypeError(value)


def tensor_bytes(type_id: int, dims: tuple[int, ...]) -> int:
    kind = GGML_TYPES[type_id]
    return math.prod(dims) // kind.block_size * kind.type_size


def gguf_bytes(
    metadata: dict[str, Any],
    tensors: list[tuple[str, tuple[int, ...], int]],
    *,
    version: int = 3,
    alignment: int = 32,
) -> tuple[bytes, int]:
    """(header bytes padded to the alignment, size of the data section). Tensors: (name, ggml dims, type)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, raw in metadata.items():
        kind, value = _infer(raw)
        head += _str(key) + struct.pack("<I", kind) + _value(kind, value)
    offset = 0
    for name, dims, type_id in tensors:
        head += _str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", type_id, offset)
        offset += -(-tensor_bytes(type_id, dims) // alignment) * alignment
    head += b"\0" * (-len(head) % alignment)
    return head, offset


def write_gguf(
    path: Path, metadata: dict[str, Any], tensors: list[tuple[str, tuple[int, ...], int]], **kwargs: Any
) -> Path:
    head, data = gguf_bytes(metadata, tensors, **kwargs)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(len(head) + data)  # a hole: no disk blocks for the tensor data
    return path


Q4_0, Q4_K, Q6_K, Q8_0, F16_, F32_ = 2, 12, 14, 8, 1, 0


def llama_like(
    path: Path,
    *,
    arch: str = "llama",
    vocab: int,
    embd: int,
    layers: int,
    heads: int,
    kv_heads: int,
    ff: int,
    ctx: int,
    qkv_bias: bool = False,
    tied: bool = False,
    weight_type: int = Q4_0,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """A decoder laid out as convert_hf_to_gguf.py writes llama and qwen2 (norms F32, matrices quantized)."""
    hd = embd // heads
    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": f"test {arch}",
        "general.file_type": 2,
        f"{arch}.block_count": layers,
        f"{arch}.context_length": ctx,
        f"{arch}.embedding_length": embd,
        f"{arch}.feed_forward_length": ff,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.rope.freq_base": 500000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "llama",
        **(extra_meta or {}),
    }
    t: list[tuple[str, tuple[int, ...], int]] = [
        ("token_embd.weight", (embd, vocab), weight_type),
        ("output_norm.weight", (embd,), F32_),
    ]
    if not tied:
        t.append(("output.weight", (embd, vocab), weight_type))
    for i in range(layers):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (embd,), F32_),
            (p + "attn_q.weight", (embd, heads * hd), weight_type),
            (p + "attn_k.weight", (embd, kv_heads * hd), weight_type),
            (p + "attn_v.weight", (embd, kv_heads * hd), weight_type),
        ]
        if qkv_bias:
            t += [
                (p + "attn_q.bias", (heads * hd,), F32_),
                (p + "attn_k.bias", (kv_heads * hd,), F32_),
                (p + "attn_v.bias", (kv_heads * hd,), F32_),
            ]
        t += [
            (p + "attn_output.weight", (heads * hd, embd), weight_type),
            (p + "ffn_norm.weight", (embd,), F32_),
            (p + "ffn_gate.weight", (embd, ff), weight_type),
            (p + "ffn_up.weight", (embd, ff), weight_type),
            (p + "ffn_down.weight", (ff, embd), weight_type),
        ]
    return write_gguf(path, meta, t)


def llama3_8b(tmp_path: Path, **kwargs: Any) -> Path:
    # Meta-Llama-3-8B's shapes (config.json: vocab 128256, hidden 4096, 32 layers, 32 heads, 8 KV heads,
    # intermediate 14336, 131072 positions as in Llama 3.1).
    return llama_like(
        tmp_path / "llama3-8b.gguf",
        vocab=128256,
        embd=4096,
        layers=32,
        heads=32,
        kv_heads=8,
        ff=14336,
        ctx=131072,
        **kwargs,
    )


def qwen25_7b(tmp_path: Path) -> Path:
    # Qwen2.5-7B's shapes (config.json: vocab 152064, hidden 3584, 28 layers, 28 heads, 4 KV heads,
    # intermediate 18944, q/k/v biases).
    return llama_like(
        tmp_path / "qwen25-7b.gguf",
        arch="qwen2",
        vocab=152064,
        embd=3584,
        layers=28,
        heads=28,
        kv_heads=4,
        ff=18944,
        ctx=32768,
        qkv_bias=True,
    )


TINY = {"vocab": 64, "embd": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 64, "ctx": 256}


# --- the ggml type table ------------------------------------------------------------------------------

# Bytes of one block of each quantized type, from the block structs in ggml/src/ggml-common.h (block_q4_K:
# 2 half scales + 12 bytes of scales + 128 bytes of nibbles = 144 ...).
BLOCK_BYTES = {
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q8_1": (32, 40),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
    "Q8_K": (256, 292),
    "IQ2_XXS": (256, 66),
    "IQ2_XS": (256, 74),
    "IQ3_XXS": (256, 98),
    "IQ1_S": (256, 50),
    "IQ4_NL": (32, 18),
    "IQ3_S": (256, 110),
    "IQ2_S": (256, 82),
    "IQ4_XS": (256, 136),
    "IQ1_M": (256, 56),
    "TQ1_0": (256, 54),
    "TQ2_0": (256, 66),
    "MXFP4": (32, 17),
    "NVFP4": (64, 36),
    "Q1_0": (128, 18),
    "Q2_0": (64, 18),
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "F64": (1, 8),
    "I8": (1, 1),
    "I16": (1, 2),
    "I32": (1, 4),
    "I64": (1, 8),
}


def test_type_table_matches_the_block_structs() -> None:
    assert {t.name: (t.block_size, t.type_size) for t in GGML_TYPES.values()} == BLOCK_BYTES
    assert ggml_type(12).name == "Q4_K" and ggml_type(12).bits_per_weight == 4.5
    assert ggml_type_by_name("q8_0").id == 8
    with pytest.raises(InputError, match="unknown ggml type 'q3_0'"):
        ggml_type_by_name("q3_0")


def test_type_table_matches_gguf_py() -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package cross-checks the table when installed")
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert (GGML_TYPES[int(qtype)].block_size, GGML_TYPES[int(qtype)].type_size) == (block, size), (
            qtype.name
        )
        assert GGML_TYPES[int(qtype)].name == qtype.name


@pytest.mark.parametrize("type_id", sorted(GGML_TYPES))
def test_exact_bytes_for_every_type(tmp_path: Path, type_id: int) -> None:
    kind = GGML_TYPES[type_id]
    dims = (kind.block_size * 3, 5)
    path = write_gguf(
        tmp_path / "t.gguf", {"general.architecture": "test"}, [("w", dims, type_id), ("n", (7,), 0)]
    )

    [file] = read_gguf(path)

    assert file.tensors[0].nbytes == 15 * kind.type_size
    assert file.tensors[0].type_name == kind.name
    assert file.tensors[1].nbytes == 28
    assert file.tensors[1].offset == -(-15 * kind.type_size // 32) * 32
    assert (
        file.data_offset + file.tensors[1].offset + 32 == path.stat().st_size
    )  # the writer pads the last one


@pytest.mark.parametrize("type_id", [4, 5, 31, 36, 43, 1000])
def test_unknown_and_removed_types(tmp_path: Path, type_id: int) -> None:
    path = write_gguf(tmp_path / "t.gguf", {}, [])
    blob = path.read_bytes()
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _str("w") + struct.pack("<IQ", 1, 32)
    head += struct.pack("<IQ", type_id, 0)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * 64)
    assert blob  # the empty file is valid too

    with pytest.raises(ConfigError, match=f"tensor 'w' has unknown ggml type {type_id}"):
        read_gguf(path)


# --- the reader ---------------------------------------------------------------------------------------------


def test_metadata_of_every_value_type(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "llama",
        "u8": (U8, 255),
        "i8": (I8, -128),
        "u16": (U16, 65535),
        "i16": (I16, -32768),
        "u32": (U32, 2**32 - 1),
        "i32": (I32, -(2**31)),
        "f32": (F32, 0.5),
        "bool": (BOOL, True),
        "u64": (U64, 2**64 - 1),
        "i64": (I64, -(2**63)),
        "f64": (F64, 1e300),
        "str": (STR, "héllo"),
        "arr_f32": (ARR, (F32, [1.0, 2.5])),
        "arr_bool": (ARR, (BOOL, [True, False])),
        "arr_nested": (ARR, (ARR, [(I16, [1, -2]), (STR, ["a", "b"])])),
        "arr_empty": (ARR, (U64, [])),
        "tokenizer.ggml.tokens": (ARR, (STR, [f"t{i}" for i in range(5000)])),
    }
    path = write_gguf(tmp_path / "m.gguf", meta, [])

    [file] = read_gguf(path)
    got = file.metadata

    assert got["u8"] == 255 and got["i8"] == -128 and got["u64"] == 2**64 - 1 and got["i64"] == -(2**63)
    assert got["f32"] == 0.5 and got["f64"] == 1e300 and got["bool"] is True and got["str"] == "héllo"
    assert got["arr_f32"] == [1.0, 2.5] and got["arr_bool"] == [True, False]
    assert got["arr_nested"] == [[1, -2], ["a", "b"]] and got["arr_empty"] == []
    assert len(got["tokenizer.ggml.tokens"]) == 5000  # long string arrays are kept as their length
    assert (file.version, file.alignment, file.tensors) == (3, 32, ())


def test_version_2_and_custom_alignment(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {"general.alignment": 64},
        [("a", (3,), 0), ("b", (32,), Q8_0)],
        version=2,
        alignment=64,
    )

    [file] = read_gguf(path)

    assert (file.version, file.alignment) == (2, 64)
    assert file.data_offset % 64 == 0
    assert [(t.offset, t.nbytes) for t in file.tensors] == [(0, 12), (64, 34)]


@pytest.mark.parametrize("alignment", [0, 12, 3, -1])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    path = write_gguf(tmp_path / "m.gguf", {"general.alignment": (I32, alignment)}, [])
    with pytest.raises(ConfigError, match="general.alignment must be a power of two"):
        read_gguf(path)


def test_truncated_metadata(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama", "general.name": "x" * 100}, [])
    path.write_bytes(path.read_bytes()[:120])

    with pytest.raises(
        ConfigError, match=r"m.gguf is truncated or corrupt: value of 'general.name' runs past"
    ):
        read_gguf(path)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {}, [("a", (32, 4), Q8_0)])  # 136 bytes, padded to 160
    path.write_bytes(path.read_bytes()[:-30])

    with pytest.raises(ConfigError, match=r"m.gguf is truncated: tensor 'a' ends at byte"):
        read_gguf(path)


def test_corrupt_counts_and_dims(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0) + b"\0" * 64)
    with pytest.raises(ConfigError, match="implausible counts"):
        read_gguf(path)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + _str("w") + struct.pack("<I", 9)
    path.write_bytes(head + b"\0" * 64)
    with pytest.raises(ConfigError, match="tensor 'w' has 9 dimensions"):
        read_gguf(path)
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _str("k") + struct.pack("<I", 99)
    path.write_bytes(head + b"\0" * 64)
    with pytest.raises(ConfigError, match="value of 'k' has unknown value type 99"):
        read_gguf(path)


def test_misaligned_rows(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {}, [])
    head = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 1, 0)
        + _str("w")
        + struct.pack("<IQ", 1, 48)
        + struct.pack("<IQ", Q4_K, 0)
    )
    path.write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * 1024)
    with pytest.raises(ConfigError, match="has 48 columns, not a multiple of the Q4_K block size 256"):
        read_gguf(path)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (struct.pack("<Q", 50) + b'{"w": {"dtype": "F16"}}' + b" " * 40, "not a GGUF file.*safetensors"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0) + b"\0" * 16, "GGUF version 1, which gpuplan does not read"),
        (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 16, "big-endian GGUF"),
        (b"GGUF" + struct.pack("<IQQ", 7, 0, 0) + b"\0" * 16, "GGUF version 7"),
        (b"GGUF\x03", "too short"),
    ],
)
def test_not_a_readable_gguf(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(blob)
    with pytest.raises(ConfigError, match=message):
        read_gguf(path)


def test_missing_file_and_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match="holds no .gguf model file"):
        read_gguf(tmp_path)
    write_gguf(tmp_path / "a-Q4_K_M.gguf", {}, [])
    write_gguf(tmp_path / "mmproj-F16.gguf", {}, [])
    assert read_gguf(tmp_path)[0].path.endswith("a-Q4_K_M.gguf")
    write_gguf(tmp_path / "a-Q8_0.gguf", {}, [])
    with pytest.raises(InputError, match="holds 2 GGUF models"):
        read_gguf(tmp_path)


def test_split_model(tmp_path: Path) -> None:
    tensors = [
        ("token_embd.weight", (32, 64), Q8_0),
        ("blk.0.attn_q.weight", (32, 32), Q8_0),
        ("blk.1.attn_q.weight", (32, 32), Q8_0),
    ]
    for no, part in enumerate((tensors[:2], tensors[2:])):
        write_gguf(
            tmp_path / f"m-{no + 1:05d}-of-00002.gguf",
            {"split.no": (U16, no), "split.count": (U16, 2), "split.tensors.count": (I32, 3)},
            part,
        )

    files = read_gguf(tmp_path / "m-00002-of-00002.gguf")

    assert [len(f.tensors) for f in files] == [2, 1]
    assert [t.file_index for f in files for t in f.tensors] == [0, 0, 1]
    (tmp_path / "m-00001-of-00002.gguf").unlink()
    with pytest.raises(ModelNotFoundError, match="m-00001-of-00002.gguf is missing"):
        read_gguf(tmp_path / "m-00002-of-00002.gguf")


def test_only_the_header_is_read(tmp_path: Path) -> None:
    path = llama3_8b(tmp_path)
    assert path.stat().st_size > 4_500_000_000

    model = load_gguf_model(path)

    assert (
        model.weights_bytes == 4_517_937_152
    )  # the zero-filled file measured on the GPU had this many bytes
    assert model.bytes_by_type() == {"Q4_0": 4_516_872_192, "F32": (2 * 32 + 1) * 4096 * 4}


def test_matches_gguf_py_reader(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf", reason="the gguf package cross-checks the reader when installed")
    import numpy as np

    path = tmp_path / "ref.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_uint64("test.big", 2**40)
    writer.add_array("test.arr", [1, 2, 3])
    writer.add_tensor("a", np.zeros((3, 64), dtype=np.float16))
    writer.add_tensor("b", np.zeros((2, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    [mine] = read_gguf(path)
    ref = gguf.GGUFReader(str(path))

    assert [(t.name, t.dims, t.nbytes, mine.data_offset + t.offset) for t in mine.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.n_bytes), int(t.data_offset)) for t in ref.tensors
    ]
    assert mine.metadata["test.big"] == 2**40 and mine.metadata["test.arr"] == [1, 2, 3]
    assert mine.metadata["llama.block_count"] == 1


# --- GGUF -> ModelSpec ---------------------------------------------------------------------------------


def test_llama3_8b_spec(tmp_path: Path) -> None:
    model = load_gguf_model(llama3_8b(tmp_path))
    spec = model.spec

    assert (model.architecture, model.name, model.file_type) == ("llama", "test llama", "Q4_0")
    assert (spec.num_hidden_layers, spec.hidden_size, spec.vocab_size) == (32, 4096, 128256)
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim, spec.v_head_dim) == (
        32,
        8,
        128,
        128,
    )
    assert (spec.intermediate_size, spec.ffn_gated, spec.tie_word_embeddings) == (14336, True, False)
    assert spec.layer_windows == (None,) * 32 and spec.max_position_embeddings == 131072
    # Meta-Llama-3-8B has 8,030,261,248 parameters (the safetensors total on its model card).
    assert spec.parameters == 8_030_261_248
    groups = {g.name: g for g in spec.tensors}
    assert (
        groups["blk.*.ffn_down.weight"].shape == (4096, 14336) and groups["blk.*.ffn_down.weight"].count == 32
    )
    assert groups["output.weight"].role is TensorRole.LM_HEAD
    assert groups["token_embd.weight"].role is TensorRole.EMBEDDING
    assert groups["blk.*.attn_norm.weight"].role is TensorRole.NORM


def test_qwen25_7b_spec(tmp_path: Path) -> None:
    spec = load_gguf_model(qwen25_7b(tmp_path)).spec

    # Qwen2.5-7B's model card states 7.61B parameters; this is the exact sum over its shapes, biases included.
    assert spec.parameters == 7_615_616_512
    assert spec.parameters_by_role()["bias"] == 28 * (3584 + 2 * 512)


def test_tied_embeddings_and_head_dim_keys(tmp_path: Path) -> None:
    path = llama_like(
        tmp_path / "t.gguf",
        tied=True,
        extra_meta={"llama.attention.key_length": 16, "llama.attention.value_length": 8},
        **TINY,
    )
    spec = load_gguf_model(path).spec

    assert spec.tie_word_embeddings and (spec.head_dim, spec.v_head_dim) == (16, 8)


def test_sliding_window_patterns(tmp_path: Path) -> None:
    gemma2 = load_gguf_model(llama_like(tmp_path / "g2.gguf", arch="gemma2", **{**TINY, "layers": 4}))
    assert gemma2.spec.layer_windows == (4096, None, 4096, None)  # llama.cpp's default window and pattern 2
    gemma3 = load_gguf_model(
        llama_like(
            tmp_path / "g3.gguf",
            arch="gemma3",
            extra_meta={"gemma3.attention.sliding_window": 512},
            **{**TINY, "layers": 7},
        )
    )
    assert gemma3.spec.layer_windows == (512,) * 5 + (None, 512)
    explicit = load_gguf_model(
        llama_like(
            tmp_path / "e.gguf",
            arch="gemma3",
            extra_meta={
                "gemma3.attention.sliding_window": 128,
                "gemma3.attention.sliding_window_pattern": (ARR, (BOOL, [False, True])),
            },
            **TINY,
        )
    )
    assert explicit.spec.layer_windows == (None, 128)
    unknown = load_gguf_model(
        llama_like(
            tmp_path / "u.gguf", arch="mistral", extra_meta={"mistral.attention.sliding_window": 4096}, **TINY
        )
    )
    assert unknown.spec.layer_windows == (None, None)
    assert any("no layer pattern gpuplan knows" in note for note in unknown.spec.notes)


def test_moe_spec(tmp_path: Path) -> None:
    embd, ff_exp, n_exp = 32, 64, 8
    meta = {
        "general.architecture": "qwen3moe",
        "qwen3moe.block_count": 2,
        "qwen3moe.embedding_length": embd,
        "qwen3moe.attention.head_count": 4,
        "qwen3moe.attention.head_count_kv": 2,
        "qwen3moe.expert_count": n_exp,
        "qwen3moe.expert_used_count": 2,
        "qwen3moe.expert_feed_forward_length": ff_exp,
        "qwen3moe.context_length": 1024,
    }
    t = [("token_embd.weight", (embd, 100), F16_), ("output.weight", (embd, 100), F16_)]
    for i in range(2):
        p = f"blk.{i}."
        t += [
            (p + "attn_q.weight", (embd, embd), Q8_0),
            (p + "attn_k.weight", (embd, 16), Q8_0),
            (p + "attn_v.weight", (embd, 16), Q8_0),
            (p + "attn_output.weight", (embd, embd), Q8_0),
            (p + "ffn_gate_inp.weight", (embd, n_exp), F32_),
            (p + "ffn_gate_exps.weight", (embd, ff_exp, n_exp), Q8_0),
            (p + "ffn_up_exps.weight", (embd, ff_exp, n_exp), Q8_0),
            (p + "ffn_down_exps.weight", (ff_exp, embd, n_exp), Q8_0),
        ]
    spec = load_gguf_model(write_gguf(tmp_path / "moe.gguf", meta, t)).spec

    assert spec.moe is not None
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.expert_intermediate_size) == (8, 2, 64)
    assert spec.moe.num_moe_layers == 2 and spec.intermediate_size == 64
    assert spec.parameters_by_role()["expert_linear"] == 2 * 3 * embd * ff_exp * n_exp
    assert spec.active_parameters < spec.parameters


def test_recurrent_model_is_unsupported(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "mamba",
        "mamba.block_count": 2,
        "mamba.embedding_length": 32,
        "mamba.context_length": 1024,
    }
    path = write_gguf(tmp_path / "m.gguf", meta, [("token_embd.weight", (32, 10), F32_)])
    with pytest.raises(UnsupportedModelError, match="'mamba' has no attention heads"):
        load_gguf_model(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({}, "general.architecture is missing"),
        ({"general.architecture": "llama"}, "llama.block_count is missing"),
        ({"general.architecture": "llama", "llama.block_count": 2}, "llama.embedding_length is missing"),
        (
            {
                "general.architecture": "llama",
                "llama.block_count": 2,
                "llama.embedding_length": 30,
                "llama.attention.head_count": 4,
            },
            "30 is not divisible by 4 heads",
        ),
        (
            {
                "general.architecture": "llama",
                "llama.block_count": 2,
                "llama.embedding_length": 32,
                "llama.attention.head_count": 4,
                "llama.feed_forward_length": (STR, "big"),
            },
            "must be a non-negative",
        ),
    ],
)
def test_bad_metadata(tmp_path: Path, meta: dict[str, Any], message: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", meta, [("token_embd.weight", (32, 10), F32_)])
    with pytest.raises(ConfigError, match=message):
        load_gguf_model(path)


# --- llama.cpp ------------------------------------------------------------------------------------------

# Measured with llama.cpp commit 0c1e570 (2026-10-01; llama-completion built for sm_90 with CUDA 13.0) on one
# NVIDIA H200 (driver 580.159.04), on zero-filled GGUF files with exactly the tensors llama3_8b() and
# qwen25_7b() describe. Each run: `llama-completion -m M -p a -n 8 --temp 0 -no-cnv --no-warmup -fit off
# -lv 4` plus the flags below. The values are the MiB llama.cpp logged: "CUDA0 model buffer size",
# "CUDA0 KV buffer size", "CPU KV buffer size", "CUDA0 compute buffer size", "CUDA_Host compute buffer size",
# and the peak of `nvidia-smi --query-gpu=memory.used` during the run.
MEASURED = [
    # name, model, flags, gpu weights, gpu kv, host kv, gpu compute, host compute, nvidia-smi peak
    ("a01", "llama3-8b", {"c": 4096, "ngl": 99, "fa": "on"}, 4026.83, 512.00, 0, 258.50, 20.01, 5395),
    ("a02", "llama3-8b", {"c": 4096, "ngl": 99, "fa": "off"}, 4026.83, 512.00, 0, 300.01, 28.01, 5437),
    ("a03", "llama3-8b", {"c": 32768, "ngl": 99, "fa": "on"}, 4026.83, 4096.00, 0, 258.50, 48.01, 8979),
    ("a04", "llama3-8b", {"c": 32768, "ngl": 99, "fa": "off"}, 4026.83, 4096.00, 0, 2148.01, 84.01, 10869),
    ("a05", "llama3-8b", {"c": 131072, "ngl": 99, "fa": "on"}, 4026.83, 16384.00, 0, 258.50, 144.01, 21267),
    ("a06", "llama3-8b", {"c": 131072, "ngl": 99, "fa": "off"}, 4026.83, 16384.00, 0, 8484.01, 276.01, 29493),
    (
        "a07",
        "llama3-8b",
        {"c": 32768, "ngl": 99, "fa": "on", "ctk": "q8_0", "ctv": "q8_0"},
        4026.83,
        2176.00,
        0,
        258.50,
        48.09,
        7059,
    ),
    (
        "a08",
        "llama3-8b",
        {"c": 32768, "ngl": 99, "fa": "on", "ctk": "q4_0", "ctv": "q4_0"},
        4026.83,
        1152.00,
        0,
        258.50,
        48.09,
        6035,
    ),
    (
        "a09",
        "llama3-8b",
        {"c": 32768, "ub": 2048, "ngl": 99, "fa": "on"},
        4026.83,
        4096.00,
        0,
        1034.00,
        192.05,
        9753,
    ),
    ("a10", "llama3-8b", {"c": 32768, "ngl": 17, "fa": "on"}, 2154.33, 2048.00, 2048.00, 258.50, 48.01, 5059),
    ("a11", "llama3-8b", {"c": 32768, "ngl": 0, "fa": "on"}, 0, 0, 4096.00, 540.31, 48.01, 1069),
    (
        "a12",
        "llama3-8b",
        {"c": 32768, "ngl": 99, "fa": "on", "np": 4},
        4026.83,
        4096.00,
        0,
        258.50,
        24.01,
        8979,
    ),
    (
        "a14",
        "llama3-8b",
        {"c": 10000, "ngl": 99, "fa": "on", "ctk": "q8_0"},
        4026.83,
        980.00,
        0,
        258.50,
        26.08,
        5863,
    ),
    ("a15", "llama3-8b", {"c": 65536, "ngl": 99, "fa": "on"}, 4026.83, 8192.00, 0, 258.50, 80.01, 13075),
    (
        "a16",
        "llama3-8b",
        {"c": 32768, "ub": 256, "ngl": 99, "fa": "on"},
        4026.83,
        4096.00,
        0,
        129.25,
        24.01,
        8849,
    ),
    ("a17", "llama3-8b", {"c": 32768, "ngl": 32, "fa": "on"}, 3909.80, 3968.00, 128.00, 258.50, 48.01, 8733),
    (
        "a18",
        "llama3-8b",
        {"c": 32768, "ngl": 17, "fa": "off"},
        2154.33,
        2048.00,
        2048.00,
        2265.00,
        84.01,
        7065,
    ),
    ("a19", "llama3-8b", {"c": 65536, "ngl": 99, "fa": "off"}, 4026.83, 8192.00, 0, 4260.01, 148.01, 17077),
    ("b01", "qwen25-7b", {"c": 32768, "ngl": 99, "fa": "on"}, 3794.07, 1792.00, 0, 304.00, 46.01, 6487),
    ("b02", "qwen25-7b", {"c": 32768, "ngl": 99, "fa": "off"}, 3794.07, 1792.00, 0, 1886.01, 80.01, 8071),
    (
        "b03",
        "qwen25-7b",
        {"c": 8192, "ub": 1024, "ngl": 99, "fa": "on"},
        3794.07,
        448.00,
        0,
        608.00,
        44.03,
        5447,
    ),
    ("b04", "qwen25-7b", {"c": 8192, "ngl": 1, "fa": "on"}, 292.37, 0, 448.00, 304.00, 22.01, 1193),
]


@pytest.fixture(scope="module")
def measured_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("gguf")
    return {"llama3-8b": load_gguf_model(llama3_8b(folder)), "qwen25-7b": load_gguf_model(qwen25_7b(folder))}


def _settings(flags: dict[str, Any]) -> LlamaCppSettings:
    return LlamaCppSettings(
        n_gpu_layers=flags["ngl"],
        ctx_size=flags["c"],
        n_ubatch=flags.get("ub", 512),
        flash_attn=flags["fa"],
        cache_type_k=flags.get("ctk", "f16"),
        cache_type_v=flags.get("ctv", "f16"),
        parallel=flags.get("np", 1),
    )


@pytest.mark.parametrize("row", MEASURED, ids=[r[0] for r in MEASURED])
def test_buffers_match_llamacpp_measurements(measured_models: dict[str, Any], row: tuple) -> None:
    _, model_name, flags, weights, kv, kv_host, compute, host_compute, smi_peak = row
    mem = estimate_llamacpp(measured_models[model_name], _settings(flags))

    # llama.cpp prints MiB with two decimals.
    assert mem.gpu_weights_bytes / MiB == pytest.approx(weights, abs=0.006)
    assert mem.gpu_kv_bytes / MiB == pytest.approx(kv, abs=0.006)
    assert mem.host_kv_bytes / MiB == pytest.approx(kv_host, abs=0.006)
    assert mem.gpu_compute_bytes / MiB == pytest.approx(compute, abs=0.02)
    assert mem.host_compute_bytes / MiB == pytest.approx(host_compute, abs=0.1)
    if flags["ngl"] > 0:
        # nvidia-smi's whole-GPU figure, CUDA context and libraries included.
        assert mem.gpu_total_bytes / MiB == pytest.approx(smi_peak, abs=3)
    else:
        # With no layer on the GPU the runtime took 529 MiB instead of 597: counted high, never low.
        assert 0 < mem.gpu_total_bytes / MiB - smi_peak < 80


def test_placement_counts_the_output_layer(measured_models: dict[str, Any]) -> None:
    model = measured_models["llama3-8b"]
    cases = {
        None: (32, True),
        33: (32, True),
        99: (32, True),
        32: (31, True),
        17: (16, True),
        1: (0, True),
        0: (0, False),
        -1: (32, True),
    }
    for ngl, (layers, output) in cases.items():
        mem = estimate_llamacpp(model, LlamaCppSettings(n_gpu_layers=ngl, ctx_size=4096))
        assert (mem.layers_on_gpu, mem.output_on_gpu) == (layers, output), ngl
    full = estimate_llamacpp(model, LlamaCppSettings(ctx_size=4096))
    # token_embd (Q4_0, 281.81 MiB) always stays in host memory.
    assert full.host_weights_bytes == model.tensor("token_embd.weight").nbytes == 295_501_824


def test_context_defaults_to_the_trained_length_and_is_padded(measured_models: dict[str, Any]) -> None:
    model = measured_models["qwen25-7b"]
    assert estimate_llamacpp(model).n_ctx == 32768
    mem = estimate_llamacpp(model, LlamaCppSettings(ctx_size=10000, parallel=3))
    # src/llama-context.cpp: pad(10000, 256) = 10240; per stream pad(10240 / 3, 256) = 3584; 3 x 3584 = 10752.
    assert (mem.n_ctx, mem.n_ctx_seq, mem.n_seq, mem.kv_unified) == (10752, 3584, 3, False)
    unified = estimate_llamacpp(model, LlamaCppSettings(ctx_size=10000, parallel=3, kv_unified=True))
    assert (unified.n_ctx, unified.n_ctx_seq) == (10240, 10240)
    server = estimate_llamacpp(model, LlamaCppSettings(ctx_size=8192, parallel=None))
    assert (server.n_seq, server.kv_unified, server.n_ctx_seq) == (4, True, 8192)


def test_kv_cache_scales_with_type_and_context(measured_models: dict[str, Any]) -> None:
    model = measured_models["llama3-8b"]

    def kv(**kwargs: Any) -> int:
        return estimate_llamacpp(model, LlamaCppSettings(ctx_size=8192, **kwargs)).gpu_kv_bytes

    f16 = kv()
    assert f16 == 8192 * 32 * 2 * 1024 * 2
    assert kv(cache_type_k="q8_0", cache_type_v="q8_0") * 64 == f16 * 34
    assert kv(cache_type_k="q4_0", cache_type_v="q4_0") * 64 == f16 * 18
    assert kv(cache_type_k="f32", cache_type_v="f32") == 2 * f16
    assert kv(kv_offload=False) == 0
    assert estimate_llamacpp(model, LlamaCppSettings(ctx_size=8192, kv_offload=False)).host_kv_bytes == f16


def test_cache_type_errors(measured_models: dict[str, Any]) -> None:
    model = measured_models["llama3-8b"]
    with pytest.raises(InputError, match="a quantized V cache needs flash attention"):
        estimate_llamacpp(model, LlamaCppSettings(ctx_size=4096, flash_attn="off", cache_type_v="q8_0"))
    with pytest.raises(InputError, match="unknown --cache-type-k 'q3_k'"):
        estimate_llamacpp(model, LlamaCppSettings(ctx_size=4096, cache_type_k="q3_k"))


def test_sliding_window_cache(tmp_path: Path) -> None:
    # gemma2 layout: even layers slide over 4096 tokens (llama.cpp's default for gemma2).
    model = load_gguf_model(
        llama_like(
            tmp_path / "g.gguf",
            arch="gemma2",
            vocab=64,
            embd=64,
            layers=4,
            heads=4,
            kv_heads=2,
            ff=64,
            ctx=32768,
            weight_type=F16_,
        )
    )
    per_cell = 2 * 2 * 16 * 2  # K + V, 2 KV heads of 16, f16

    mem = estimate_llamacpp(model, LlamaCppSettings(ctx_size=32768))
    # src/llama-kv-cache-iswa.cpp: pad(min(32768, 4096 x 1 + 512), 256) = 4608 cells for the sliding layers.
    assert mem.kv_cells_swa == 4608
    assert mem.gpu_kv_bytes == per_cell * (2 * 32768 + 2 * 4608)
    full = estimate_llamacpp(model, LlamaCppSettings(ctx_size=32768, swa_full=True))
    assert full.gpu_kv_bytes == per_cell * 4 * 32768
    server = estimate_llamacpp(model, LlamaCppSettings(ctx_size=32768, parallel=None))
    assert server.kv_cells_swa == _pad(4096 * 4 + 512)


def _pad(n: int) -> int:
    return -(-n // 256) * 256


def test_tied_output_is_copied_to_the_gpu(tmp_path: Path) -> None:
    model = load_gguf_model(
        llama_like(tmp_path / "t.gguf", tied=True, weight_type=F16_, **{**TINY, "vocab": 1000})
    )
    embd = model.tensor("token_embd.weight").nbytes

    full = estimate_llamacpp(model, LlamaCppSettings())
    layers_only = estimate_llamacpp(model, LlamaCppSettings(n_gpu_layers=0))

    assert full.host_weights_bytes == embd
    assert full.gpu_weights_bytes == model.weights_bytes - embd + embd  # every layer plus the copy
    assert layers_only.gpu_weights_bytes == 0
    assert any("copy of token_embd" in note for note in full.notes)


def test_mla_caches_k_only(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "deepseek2",
        "deepseek2.block_count": 2,
        "deepseek2.embedding_length": 64,
        "deepseek2.attention.head_count": 4,
        "deepseek2.attention.head_count_kv": 1,
        "deepseek2.attention.key_length": 96,
        "deepseek2.attention.value_length": 64,
        "deepseek2.attention.key_length_mla": 48,
        "deepseek2.attention.value_length_mla": 32,
        "deepseek2.attention.kv_lora_rank": 64,
        "deepseek2.rope.dimension_count": 32,
        "deepseek2.feed_forward_length": 128,
        "deepseek2.context_length": 4096,
    }
    t = [("token_embd.weight", (64, 100), F16_), ("output.weight", (64, 100), F16_)]
    for i in range(2):
        t += [(f"blk.{i}.attn_kv_a_mqa.weight", (64, 96), F16_), (f"blk.{i}.ffn_up.weight", (64, 128), F16_)]
    model = load_gguf_model(write_gguf(tmp_path / "ds.gguf", meta, t))

    assert model.spec.mla is not None and model.spec.mla.latent_dim == 96
    mem = estimate_llamacpp(model, LlamaCppSettings(ctx_size=4096))
    assert mem.gpu_kv_bytes == 2 * 4096 * 96 * 2  # (kv_lora_rank + rope) per token, f16, K only


def test_mtp_layers_are_not_loaded(tmp_path: Path) -> None:
    path = llama_like(
        tmp_path / "m.gguf",
        weight_type=F16_,
        extra_meta={"llama.nextn_predict_layers": 1},
        **{**TINY, "layers": 3},
    )
    model = load_gguf_model(path)

    assert model.spec.num_hidden_layers == 2 and model.spec.mtp_layers == 1
    assert model.spec.loaded_parameters < model.spec.parameters
    mem = estimate_llamacpp(model, LlamaCppSettings())
    blk2 = sum(t.nbytes for t in model.tensors if t.name.startswith("blk.2."))
    assert mem.gpu_weights_bytes + mem.host_weights_bytes == model.weights_bytes - blk2


def test_runtime_is_counted_once_on_the_gpu(measured_models: dict[str, Any]) -> None:
    mem = estimate_llamacpp(measured_models["llama3-8b"], LlamaCppSettings(ctx_size=4096))
    assert mem.runtime_bytes == LLAMACPP_CUDA_RUNTIME_BYTES
    cpu_only = estimate_llamacpp(
        measured_models["llama3-8b"], LlamaCppSettings(ctx_size=4096, n_gpu_layers=0, op_offload=False)
    )
    assert (cpu_only.gpu_total_bytes, cpu_only.runtime_bytes) == (0, 0)


def test_needs_a_context_when_the_model_has_none(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 1,
        "llama.embedding_length": 32,
        "llama.attention.head_count": 4,
        "llama.feed_forward_length": 64,
    }
    model = load_gguf_model(write_gguf(tmp_path / "m.gguf", meta, [("token_embd.weight", (32, 10), F32_)]))
    with pytest.raises(InputError, match="the model states no context length"):
        estimate_llamacpp(model)
    assert estimate_llamacpp(model, LlamaCppSettings(ctx_size=512)).n_ctx == 512
