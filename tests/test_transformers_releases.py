"""The transformers releases the generate() model follows (gpuplan/engines/transformers_releases.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import gpuplan
from gpuplan.engines.transformers import estimate_generate
from gpuplan.engines.transformers_releases import as_cached_by, transformers_release
from gpuplan.errors import InputError
from gpuplan.models.families import config_to_spec

FIXTURE = Path(__file__).parent / "fixtures" / "measurements" / "hybrid-generate-h100.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
DSV32 = next(r for r in ROWS if r["model_type"] == "deepseek_v32")


def _dsv32():
    return config_to_spec(dict(DSV32["config"]), label="deepseek_v32")


@pytest.mark.parametrize(("version", "expanded", "era"), [
    ("5.17.0", True, "5.17.0-5.17.x"), ("5.17.2", True, "5.17.0-5.17.x"),
    ("5.18.0", False, "5.18.0-5.25.0"), ("5.25.0", False, "5.18.0-5.25.0"), (None, False, "5.18.0-5.25.0"),
])
def test_release_rows(version, expanded, era):
    release = transformers_release(version)
    assert release.dsa_expanded_cache is expanded
    assert release.era == era
    assert release.version == (version or "5.25.0")


@pytest.mark.parametrize(("version", "message"), [("4.57.0", "outside the supported range"),
                                                  ("5.26.0", "outside the supported range"),
                                                  ("five", "not a version number")])
def test_releases_outside_the_range_are_one_input_error(version, message):
    with pytest.raises(InputError, match=message):
        transformers_release(version)


def test_sparse_mla_caches_expanded_kv_up_to_5_17():
    spec = _dsv32()
    heads, nope, rope, v = 16, 128, 64, 128  # the fixture's config
    index_dim, latent = 128, 512
    old = as_cached_by(spec, transformers_release("5.17.0"))
    new = as_cached_by(spec, transformers_release("5.18.0"))
    assert new is spec
    # 5.17.0 DynamicIndexedLayer: keys [b, heads, t, nope + rope], values [b, heads, t, v], indexer_keys [b, t, d]
    assert {lc.per_token_elems for lc in old.layer_caches} == {heads * (nope + rope + v) + index_dim}
    # 5.18.0 on: keys [b, 1, t, kv_lora_rank], values [b, 1, t, rope], indexer_keys [b, t, d]
    assert {lc.per_token_elems for lc in new.layer_caches} == {latent + rope + index_dim}


def test_families_that_always_cached_latents_are_unchanged():
    spec = config_to_spec({**DSV32["config"], "model_type": "deepseek_v3"}, label="deepseek_v3")
    assert as_cached_by(spec, transformers_release("5.17.0")) is spec


def test_estimate_follows_the_release_and_says_so():
    spec = _dsv32()
    kw = {"dtype": "bf16", "batch": 1, "seq": 1056, "new_tokens": 32}
    old = gpuplan.estimate(spec, engine_version="5.17.0", **kw)
    new = gpuplan.estimate(spec, engine_version="5.25.0", **kw)
    assert old.kv_cache_bytes > 4 * new.kv_cache_bytes
    assert any("5.17.0 caches this model's attention as K/V expanded" in n for n in old.notes)
    assert not any("expanded" in n for n in new.notes)
    llama = {"hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
             "intermediate_size": 2048, "vocab_size": 1000, "model_type": "llama"}
    a = gpuplan.estimate(config_to_spec(llama), engine_version="5.17.0", **kw)
    b = gpuplan.estimate(config_to_spec(llama), engine_version="5.25.0", **kw)
    assert a.total_bytes == b.total_bytes


def test_installed_transformers_is_read_from_metadata_not_imported(monkeypatch):
    from importlib import metadata

    from gpuplan.engines.serving import _installed_version

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "5.17.0" if name == "transformers" else real(name))
    _installed_version.cache_clear()
    try:
        spec = _dsv32()
        r = gpuplan.estimate(spec, dtype="bf16", batch=1, seq=1056, new_tokens=32)
        assert any("transformers 5.17.0 is installed here" in n for n in r.notes)
        assert any("5.17.0 caches this model's attention" in n for n in r.notes)
        given = gpuplan.estimate(spec, dtype="bf16", batch=1, seq=1056, new_tokens=32, engine_version="5.25.0")
        assert given.kv_cache_bytes < r.kv_cache_bytes
        assert "transformers" not in sys.modules and "torch" not in sys.modules
    finally:
        _installed_version.cache_clear()


def test_indexer_scores_copy_the_broadcast_keys_only_with_several_sequences():
    from gpuplan.calc.precision import resolve_precision
    from gpuplan.calc.workload import Workload

    spec = _dsv32()
    precision = resolve_precision(spec, "bf16")
    heads, dim, prompt = 32, 128, 2048
    one = estimate_generate(spec, Workload(batch=1, seq=prompt + 1, new_tokens=1), precision, 0)
    four = estimate_generate(spec, Workload(batch=4, seq=prompt + 1, new_tokens=1), precision, 0)
    scores = prompt * heads * prompt * 4
    # one sequence: the scaled scores and their relu, two [1, s, heads, t] float32 tensors
    assert one.components["prefill_indexer"] == 2 * scores
    # four: torch.matmul copies the float32 keys once per query, [4, s, d, t], beside the scores and q, k
    copy = 4 * prompt * dim * prompt * 4
    operands = 4 * prompt * heads * dim * 4 + 4 * prompt * dim * 4
    assert four.components["prefill_indexer"] == 4 * scores + copy + operands
