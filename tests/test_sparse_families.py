"""The sparse-attention, compressed-attention and looped families: what the replayed fixtures of
tests/test_architectures.py do not reach (legacy config keys, options off the default config, the engines that
refuse what they cannot model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuplan.calc.precision import resolve_precision
from gpuplan.engines.sglang import sglang_budget
from gpuplan.engines.transformers import cache_bytes
from gpuplan.engines.vllm import vllm_budget
from gpuplan.errors import ConfigError, UnsupportedModelError
from gpuplan.models.families import config_to_spec
from gpuplan.models.spec import LayerCache

FIXTURES = Path(__file__).parent / "fixtures" / "architectures"
GiB = 1 << 30


def _config(model_type: str, key: str = "config") -> dict:
    return dict(json.loads((FIXTURES / f"{model_type}.json").read_text())[key])


def test_deepseek_v2_without_top_k_routes_to_every_expert_and_says_so():
    raw = _config("deepseek_v2")
    assert raw["num_experts_per_tok"] is None  # configuration_deepseek_v2.py's default
    spec = config_to_spec(raw)
    assert spec.moe.experts_per_token == spec.moe.num_experts == 64
    assert spec.active_parameters == spec.loaded_parameters
    assert any("num_experts_per_tok is unset" in note for note in spec.notes)
    routed = config_to_spec({**raw, "num_experts_per_tok": 6})
    assert routed.loaded_parameters == spec.loaded_parameters > routed.active_parameters


def test_other_families_still_require_top_k():
    raw = {**_config("deepseek_v2"), "model_type": "deepseek_v3", "num_experts_per_tok": None}
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        config_to_spec(raw)


def test_deepseek_v4_legacy_keys_read_like_layer_types():
    """Hub configs of DeepSeek-V4 ship compress_ratios (0/4/128 per layer), compress_rate_csa/_hca and
    num_hash_layers (configuration_deepseek_v4.py folds them in)."""
    raw = _config("deepseek_v4")
    ratio = {"heavily_compressed_attention": 128, "compressed_sparse_attention": 4}
    legacy = {k: v for k, v in raw.items() if k not in ("layer_types", "mlp_layer_types", "compress_rates")}
    legacy.update(compress_ratios=[ratio[k] for k in raw["layer_types"]], compress_rate_csa=4,
                  compress_rate_hca=128, num_hash_layers=raw["mlp_layer_types"].count("hash_moe"))
    assert config_to_spec(legacy).tensors == config_to_spec(raw).tensors
    assert config_to_spec(legacy).layer_caches == config_to_spec(raw).layer_caches


def test_deepseek_v4_sliding_layers_keep_keys_and_values_apart():
    raw = _config("deepseek_v4", "small_config")
    raw["layer_types"] = ["sliding_attention"] + raw["layer_types"][1:]
    spec = config_to_spec(raw)
    first = spec.layer_caches[0]
    assert (first.kind, first.key_dim, first.value_dim, first.window) == ("attention", 512, 512, 128)
    assert {lc.kind for lc in spec.layer_caches[1:]} == {"compressed"}
    assert "layers.self_attn.compressor.kv_proj.weight" in {t.name for t in spec.tensors}


def test_compressed_cache_grows_by_one_entry_per_window():
    spec = config_to_spec(_config("deepseek_v4", "small_config"))
    hca = spec.layer_caches[0]
    assert hca.mixer == "heavily_compressed_attention" and hca.compress_rate == 128
    step = spec.model_copy(update={"layer_caches": (hca,)})
    # after a decode step: the window (128 tokens of 512), one buffered token per step since the last window
    # closed (kv and gate), and one compressed entry per 128 tokens
    grow = cache_bytes(step, 1, 128 * 10 + 1, 4, decoded=True) - cache_bytes(step, 1, 128 * 9 + 1, 4, decoded=True)
    assert grow == 128 * 512 * 4 // 128


def test_compressed_layer_cache_needs_a_rate():
    with pytest.raises(ValueError, match="compress_rate"):
        LayerCache(kind="compressed", mixer="heavily_compressed_attention", kv_heads=1, key_dim=512)


@pytest.mark.parametrize("budget", [vllm_budget, sglang_budget], ids=["vllm", "sglang"])
@pytest.mark.parametrize("model_type, refusal", [
    ("deepseek_v4", "compressed_sparse_attention and heavily_compressed_attention layers"),
    ("dots3_note_text", "MLA layers cache latents of different widths"),
])
def test_serving_engines_refuse_caches_they_do_not_model(budget, model_type, refusal):
    spec = config_to_spec({**_config(model_type), "dtype": "bfloat16"})
    with pytest.raises(UnsupportedModelError, match=refusal) as info:
        budget(spec, resolve_precision(spec), 141 * GiB, tp=8)
    assert "--engine transformers" in info.value.hint


def test_serving_engines_still_size_the_indexer_families():
    spec = config_to_spec({**_config("hy_v4"), "dtype": "bfloat16"})
    assert vllm_budget(spec, resolve_precision(spec), 141 * GiB, tp=2).num_blocks > 0


def test_dory_per_loop_caches_each_loop_of_the_recurrent_layers():
    raw = _config("dory")
    per_loop, last_loop = config_to_spec(raw), config_to_spec({**raw, "recurrent_kv_cache_mode": "last_loop"})
    assert per_loop.num_hidden_layers == 36  # the released config lists 72 blocks: attention, mlp, ...
    recurrent = raw["n_recurrent_layers"] // 2
    assert sum(lc.kv_heads for lc in per_loop.layer_caches) - sum(lc.kv_heads for lc in last_loop.layer_caches) \
        == recurrent * (raw["n_recurrent_loops"] - 1) * raw["num_key_value_heads"]
    assert per_loop.loaded_parameters == last_loop.loaded_parameters


def test_dory_with_halved_layer_counts_reads_the_same():
    raw = _config("dory")
    halved = {**raw, "layer_types": raw["layer_types"][::2], "num_hidden_layers": 36, "n_input_layers": 8,
              "n_recurrent_layers": 20, "n_output_layers": 8}
    assert config_to_spec(halved).tensors == config_to_spec(raw).tensors


def test_doge_moe_is_refused():
    with pytest.raises(UnsupportedModelError, match="is_moe"):
        config_to_spec({**_config("doge"), "is_moe": True})


def test_hrm_text_legacy_config_counts_its_cache_slots():
    """A legacy HRM-Text config states the per-stack layer count as num_hidden_layers."""
    raw = _config("hrm_text")
    legacy = {k: v for k, v in raw.items() if k != "num_layers_per_stack"}
    legacy["num_hidden_layers"] = raw["num_layers_per_stack"]
    spec = config_to_spec(legacy)
    assert spec.num_hidden_layers == len(spec.layer_caches) == raw["num_hidden_layers"] == 128
    assert spec.loaded_parameters == config_to_spec(raw).loaded_parameters


def test_longcat_flash_counts_two_attention_sublayers_per_layer():
    raw = _config("longcat_flash")
    spec = config_to_spec(raw)
    assert spec.num_hidden_layers == 2 * raw["num_layers"] == len(spec.layer_caches)
    assert spec.moe.num_experts == raw["n_routed_experts"]  # the zero experts have no weights
    assert any("zero experts" in note for note in spec.notes)


def test_kolibri1_1_shared_kv_layers_cache_nothing():
    spec = config_to_spec(_config("kolibri1_1"))
    sources = _config("kolibri1_1")["kv_source_layers"]
    reuse = [i for i, s in enumerate(sources) if s != i]
    assert reuse and all(spec.layer_caches[i].kind == "none" for i in reuse)
