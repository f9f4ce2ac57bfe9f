"""Model sources: local folders and files, Meta's params.json, the bundled catalog, revisions."""

from __future__ import annotations

import json

import pytest

from gpuplan.errors import InputError, ModelNotFoundError
from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import resolve_model, sentencepiece_vocab_size, split_revision

LLAMA2_7B_CONFIG = json.loads(load_catalog().get("meta-llama/Llama-2-7b-hf").path.read_text())
LLAMA2_7B_PARAMS = json.loads(load_catalog().get("meta-llama/Llama-2-7b").path.read_text())


def test_local_folder_with_config(write_config):
    folder = write_config(LLAMA2_7B_CONFIG)
    resolved = resolve_model(str(folder))
    assert resolved.source == "local"
    assert resolved.spec.parameters == 6_738_415_616


def test_local_config_file_path(write_config):
    folder = write_config(LLAMA2_7B_CONFIG)
    assert resolve_model(str(folder / "config.json")).spec.parameters == 6_738_415_616


def _sentencepiece_model(pieces: int) -> bytes:
    """A minimal SentencePiece ModelProto: `pieces` entries of field 1 (SentencePiece messages), then a
    trainer_spec (field 2), as in Meta's tokenizer.model."""
    out = bytearray()
    for i in range(pieces):
        piece = f"p{i}".encode()
        inner = b"\x0a" + bytes([len(piece)]) + piece + b"\x15" + b"\x00\x00\x80\x3f"  # piece + score float
        out += b"\x0a" + bytes([len(inner)]) + inner
    out += b"\x12\x02\x08\x01"
    return bytes(out)


def test_meta_params_json_folder_uses_the_tokenizer_vocab(write_config):
    folder = write_config(LLAMA2_7B_PARAMS, filename="params.json")
    (folder / "tokenizer.model").write_bytes(_sentencepiece_model(300))
    spec = resolve_model(str(folder)).spec
    assert spec.vocab_size == 300
    assert not any("assumed" in n for n in spec.notes)


def test_meta_params_json_without_tokenizer_assumes_llama_vocab(write_config):
    folder = write_config(LLAMA2_7B_PARAMS, filename="params.json")
    spec = resolve_model(str(folder)).spec
    assert spec.parameters == 6_738_415_616
    assert any("assumed 32000" in n for n in spec.notes)


def test_sentencepiece_reader_rejects_garbage(tmp_path):
    junk = tmp_path / "tokenizer.model"
    junk.write_bytes(b"\xff\xff\xff")
    assert sentencepiece_vocab_size(junk) is None


def test_meta_original_repo_id_resolves_from_the_catalog():
    resolved = resolve_model("meta-llama/Llama-2-7b")
    assert resolved.source == "catalog"
    assert resolved.spec.parameters == 6_738_415_616


@pytest.mark.parametrize("ref,expected", [
    ("Qwen/Qwen2.5-7B-Instruct@main", ("Qwen/Qwen2.5-7B-Instruct", "main")),
    ("Qwen/Qwen2.5-7B-Instruct", ("Qwen/Qwen2.5-7B-Instruct", None)),
    ("org/model@0123abcd", ("org/model", "0123abcd")),
])
def test_revision_syntax(ref, expected):
    assert split_revision(ref, None) == expected


def test_conflicting_revisions_are_rejected():
    with pytest.raises(InputError):
        split_revision("org/model@v1", "v2")


def test_unknown_id_offline_names_close_matches():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("mistral-7", offline=True)
    assert "mistral-7b" in (info.value.hint or "")


def test_catalog_source_only():
    with pytest.raises(ModelNotFoundError):
        resolve_model("someone/unknown-model", source="catalog")


def test_multimodal_wrapper_reads_the_text_config():
    spec = resolve_model("google/gemma-3-4b-it").spec
    assert spec.model_type == "gemma3_text"
    assert spec.num_hidden_layers == 34 and spec.num_attention_heads == 8 and spec.head_dim == 256
    assert any("vision tower" in n for n in spec.notes)
