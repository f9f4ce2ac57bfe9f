"""The recurrent and hybrid families of gpuplan/models/recurrent.py whose cache transformers 5.25 could not record
(tests/fixtures/architectures/*.json: a composite config, a forward that returns no cache, ...).

Their parameters are replayed by tests/test_architectures.py; here each expected cache is worked out by hand from
the family's default config (the fixture's) and the shapes its modeling file gives each cached tensor (bf16, one
sequence of 4,096 tokens after decoding), independently of the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuplan.engines.transformers import cache_bytes
from gpuplan.errors import ConfigError
from gpuplan.models.families import config_to_spec

FIXTURES = Path(__file__).parent / "fixtures" / "architectures"
BF16 = 2
TOKENS = 4096


def _config(model_type: str) -> dict:
    return dict(json.loads((FIXTURES / f"{model_type}.json").read_text())["config"])


def _cache(model_type: str, **changes) -> int:
    return cache_bytes(config_to_spec({**_config(model_type), **changes}), 1, TOKENS, BF16, decoded=True)


def test_recurrent_gemma_keeps_rg_lru_state_and_a_window_of_kv():
    # 26 layers cycling recurrent, recurrent, attention: 8 attention layers keep 2,048 tokens of 10 KV heads x
    # (256 + 256); 18 recurrent layers keep the RG-LRU state [2560] and 3 conv columns [2560, 3]
    attention = 8 * 2048 * 10 * 512 * BF16
    recurrent = 18 * (2560 + 2560 * 3) * BF16
    assert _cache("recurrent_gemma") == attention + recurrent == 168_140_800


def test_rwkv_state_is_five_vectors_per_layer_whatever_the_length():
    assert _cache("rwkv") == 32 * 5 * 4096 * BF16 == 1_310_720
    spec = config_to_spec(_config("rwkv"))
    assert cache_bytes(spec, 1, 10, BF16, decoded=True) == cache_bytes(spec, 1, 100_000, BF16, decoded=True)


def test_xlstm_keeps_matrix_memory_normalizer_and_max_per_head():
    # qk_dim = 4096 x 0.5 = 2048, v_dim = 4096: 8 heads of 256 x 512
    assert _cache("xlstm") == 32 * 8 * (256 * 512 + 256 + 1) * BF16 == 67_240_448


def test_gemma3n_kv_sharing_layers_cache_nothing():
    spec = config_to_spec(_config("gemma3n_text"))
    assert [lc.kind for lc in spec.layer_caches].count("none") == 15
    # the first 20 layers cache: 16 sliding (512 tokens once decoding) and 4 full, 2 KV heads x (256 + 256)
    assert _cache("gemma3n_text") == (16 * 512 + 4 * TOKENS) * 2 * 512 * BF16 == 50_331_648


def test_gemma3n_reads_one_mlp_width_per_layer():
    cfg = _config("gemma3n_text")
    base = config_to_spec(cfg).parameters
    widths = [16384] * 34 + [8192]
    assert base - config_to_spec({**cfg, "intermediate_size": widths}).parameters == 3 * 8192 * 2048


def test_inkling2_loop_layers_keep_a_cache_per_pass():
    # 24 layers, every 6th full; layers 6..17 run 3 times. Full layers 5, 11, 17, 23 (two looped): 2 + 2 x 3 = 8;
    # sliding layers (window 1024): 10 + 10 x 3 = 40; 8 KV heads x (128 + 128) each. Conv states per layer and
    # pass: keys and values (8 x 128) and the two hidden-size convolutions (2304), 4 columns: 24 + 12 x 2 sets
    per_token = 8 * 256
    conv = 2 * (8 * 128 + 2304) * 4
    expected = ((8 * TOKENS + 40 * 1024) * per_token + 48 * conv) * BF16
    assert _cache("inkling2_loop_text") == expected == 304_545_792


def test_zamba_hybrid_layers_keep_attention_beside_the_mamba_state():
    # 13 hybrid layers: 16 KV heads of attention_head_dim 464 (K and V); all 76 layers: multi-head Mamba state
    # [2 x 3712, 16] and conv [7424, 4]
    attention = 13 * TOKENS * 16 * 928 * BF16
    mamba = 76 * (7424 * 16 + 7424 * 4) * BF16
    assert _cache("zamba") == attention + mamba == 1_603_821_568


def test_blt_caches_the_local_encoder_and_decoder_only():
    # local encoder (1 layer) and local decoder (9 layers): 16 heads x (64 + 64) per byte; the patcher and the
    # global transformer run without a cache
    assert _cache("blt") == 10 * TOKENS * 16 * 128 * BF16 == 167_772_160


@pytest.mark.parametrize("model_type,changes,message", [
    ("zamba2", {"layers_block_type": ["mamba", "retention"] + ["mamba"] * 52}, "layers_block_type must name"),
    ("zaya", {"layer_types": ["hybrid_sliding"] * 40, "sliding_window": None}, "sliding_window is unset"),
    ("inkling_text", {"layer_types": ["hybrid", "full_attention"] * 33}, "only hybrid and hybrid_sliding"),
    ("recurrent_gemma", {"block_types": ["recurrent", "mlp"]}, "only recurrent and attention"),
    ("blt", {"global_config": None}, "global_config is missing"),
    ("gemma3n_text", {"intermediate_size": [16384] * 3}, "list of 35"),
])
def test_configs_these_families_cannot_read_are_one_clear_error(model_type, changes, message):
    with pytest.raises(ConfigError, match=message):
        config_to_spec({**_config(model_type), **changes})
