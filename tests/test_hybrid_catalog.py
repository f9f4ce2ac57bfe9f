"""The bundled configs of hybrid, state-space, chunked and sparse-attention flagships: read as their families.

Each expected cache size below is worked out by hand from the numbers in the bundled config.json (bf16,
one sequence of 32,768 tokens after decoding), independently of the code under test.
"""

from __future__ import annotations

import pytest

from gpuplan.engines.transformers import cache_bytes
from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import parse_config, read_json_file

CATALOG = load_catalog()
BF16 = 2
FP32 = 4
TOKENS = 32_768


def spec_of(model_id: str):
    entry = CATALOG.get(model_id)
    assert entry is not None, f"{model_id} is not in the bundled catalog"
    return parse_config(read_json_file(entry.path), label=model_id)


def test_qwen3_5_gated_deltanet_state_and_full_attention():
    spec = spec_of("Qwen/Qwen3.5-397B-A17B")
    # 60 layers, every 4th full attention: 15 x 32768 tokens x 2 KV heads x (256 + 256) x 2 bytes
    full = 15 * TOKENS * 2 * 512 * BF16
    # 45 gated-DeltaNet layers: state 64 value heads x 128 x 128 in float32 (torch_chunk_gated_delta_rule's
    # state, kept by zeros_like: modeling_qwen3_5.py, cache_utils.py), conv (2 x 16 x 128 + 64 x 128) x 4 taps
    linear = 45 * (64 * 128 * 128 * FP32 + (2 * 16 * 128 + 64 * 128) * 4 * BF16)
    assert cache_bytes(spec, 1, TOKENS, BF16, decoded=True) == full + linear == 1_199_800_320
    assert round(spec.parameters / 1e9) == 396  # the text model; "397B" also counts the vision tower


def test_nemotron_3_nano_mamba2_moe_attention_pattern():
    spec = spec_of("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    kinds = [lc.mixer for lc in spec.layer_caches]
    assert (kinds.count("mamba2"), kinds.count("moe"), kinds.count("full_attention")) == (23, 23, 6)
    attention = 6 * TOKENS * 2 * 256 * BF16
    # Mamba-2: 64 heads x 64 x state 128 in float32 (mamba2_chunk_scan on hidden_states.float(),
    # modeling_nemotron_h.py); conv over 4096 + 2 x 8 groups x 128 channels, 4 taps
    mamba = 23 * (64 * 64 * 128 * FP32 + (4096 + 2 * 8 * 128) * 4 * BF16)
    assert cache_bytes(spec, 1, TOKENS, BF16, decoded=True) == attention + mamba == 250_691_584


def test_deepseek_v3_2_caches_latent_rope_key_and_indexer_key():
    spec = spec_of("deepseek-ai/DeepSeek-V3.2")
    assert cache_bytes(spec, 1, TOKENS, BF16, decoded=True) == 61 * TOKENS * (512 + 64 + 128) * BF16
    assert spec.mtp_layers == 1 and spec.parameters > spec.loaded_parameters


def test_llama_4_chunked_layers_keep_one_chunk():
    spec = spec_of("meta-llama/Llama-4-Scout-17B-16E-Instruct")
    per_token = 8 * 256 * BF16
    expected = 36 * 8192 * per_token + 12 * TOKENS * per_token
    assert cache_bytes(spec, 1, TOKENS, BF16, decoded=True) == expected == 2_818_572_288


@pytest.mark.parametrize("model_id,kinds", [
    ("Qwen/Qwen3.5-27B", {"linear_attention": 48, "full_attention": 16}),
    ("Qwen/Qwen3.5-35B-A3B", {"linear_attention": 30, "full_attention": 10}),
    ("google/gemma-4-26B-A4B", {"sliding_attention": 25, "full_attention": 5}),
    ("XiaomiMiMo/MiMo-V2-Flash", {"full_attention": 9, "sliding_attention": 39}),
    ("zai-org/GLM-5", {"indexed_attention": 78}),
    ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", {"chunked_attention": 36, "full_attention": 12}),
])
def test_layer_patterns_of_bundled_flagships(model_id, kinds):
    spec = spec_of(model_id)
    counted: dict[str, int] = {}
    for lc in spec.layer_caches:
        counted[lc.mixer] = counted.get(lc.mixer, 0) + 1
    assert counted == kinds


def test_kimi_k2_5_reads_as_mla():
    spec = spec_of("moonshotai/Kimi-K2.5")
    assert spec.attention_kind == "MLA" and spec.moe is not None
    assert round(spec.parameters / 1e12, 2) == 1.03


def test_vllm_pads_state_pages_to_a_grown_attention_block():
    from gpuplan.calc.precision import resolve_precision
    from gpuplan.engines.vllm import STATE_GROUP, hybrid_state_pages, vllm_budget

    spec = spec_of("Qwen/Qwen3.5-35B-A3B")
    # one token of a full-attention layer: 2 KV heads x (256 + 256) x 2 bytes
    token_page = 2 * 512 * BF16
    # one gated-DeltaNet layer's state for one request: 32 x 128 x 128, conv 8192 channels x (4 - 1) taps
    state_page = (32 * 128 * 128 + 8192 * 3) * BF16
    block = 16 * -(-state_page // (16 * token_page))
    pages = hybrid_state_pages(spec, 1, BF16, 16, 32_768)
    assert (pages.block_size, pages.page_size, pages.state_page_size) == (block, block * token_page, state_page)
    assert block == 544
    # 10 full-attention layers form one group, the 30 state layers three groups of ten
    assert pages.windows == (None, STATE_GROUP, STATE_GROUP, STATE_GROUP)
    assert [len(g) for g in pages.groups] == [10, 10, 10, 10]
    assert pages.log_lines[1] == ("Padding mamba page size by 1.49% to ensure that mamba page size and attention "
                                  "page size are exactly equal.")
    budget = vllm_budget(spec, resolve_precision(spec, "bf16"), 80 * 2**30, max_model_len=32_768)
    # a request takes cdiv(32768, 544) blocks of the attention group and one block of each state group
    assert budget.blocks_per_request == -(-32_768 // 544) + 3
    assert budget.block_size == 544 and budget.page_size_per_layer == block * token_page
