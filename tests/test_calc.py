"""The calculator: golden numbers from published sources, and properties that must always hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuplan
from gpuplan.calc.overhead import NON_TORCH_BYTES
from gpuplan.calc.precision import resolve_precision
from gpuplan.calc.weights import quantized_linear_bytes, weights_bytes
from gpuplan.errors import InputError
from gpuplan.models.sources import resolve_model
from gpuplan.models.spec import QuantSpec
from gpuplan.units import GiB

LLAMA2_7B = resolve_model("meta-llama/Llama-2-7b-hf")
LLAMA2_70B = resolve_model("meta-llama/Llama-2-70b-hf")
MISTRAL_7B = resolve_model("mistralai/Mistral-7B-v0.1")
GEMMA3_1B = resolve_model("google/gemma-3-1b-it")
DEEPSEEK_R1 = resolve_model("deepseek-ai/DeepSeek-R1")


# ---- golden numbers -------------------------------------------------------------------------------


def test_llama2_7b_fp16_weights_are_two_bytes_per_parameter():
    r = gpuplan.estimate(LLAMA2_7B, dtype="fp16", seq=4096)
    assert r.weights_bytes == 2 * 6_738_415_616


def test_llama2_7b_kv_cache_is_2_gib_at_4096_tokens():
    # 2 (K and V) x 32 layers x 32 heads x 128 dims x 2 bytes = 512 KiB per token (vLLM docs, "KV cache
    # per token", and the common 0.5 MB/token figure for Llama-2-7B); x 4096 tokens = 2 GiB.
    # new_tokens=0: a forward over all 4096 tokens, whose K/V the cache then holds.
    r = gpuplan.estimate(LLAMA2_7B, dtype="fp16", seq=4096, new_tokens=0)
    assert r.kv_cache_bytes == 2 * GiB


def test_llama2_70b_gqa_kv_is_320_kib_per_token():
    # GQA with 8 KV heads: 2 x 80 layers x 8 heads x 128 dims x 2 bytes = 327,680 bytes per token.
    r = gpuplan.estimate(LLAMA2_70B, dtype="fp16", seq=1000, batch=3, new_tokens=0)
    assert r.kv_cache_bytes == 327_680 * 1000 * 3


def test_generate_caches_all_but_the_last_generated_token():
    # generate() returns the last sampled token without running it through the model again.
    r = gpuplan.estimate(LLAMA2_70B, dtype="fp16", seq=1000, new_tokens=16)
    assert r.kv_cache_bytes == 327_680 * 999


def test_fp8_kv_is_exactly_half():
    fp16 = gpuplan.estimate(LLAMA2_70B, dtype="fp16", seq=4096, batch=4)
    fp8 = gpuplan.estimate(LLAMA2_70B, dtype="fp16", kv_dtype="fp8", seq=4096, batch=4)
    assert fp8.kv_cache_bytes * 2 == fp16.kv_cache_bytes


def test_sliding_window_caps_the_cache():
    # Mistral-7B-v0.1 slides a 4096-token window on every layer: once decoding has started, the cache
    # stops growing beyond it (transformers' DynamicSlidingWindowLayer).
    longer = gpuplan.estimate(MISTRAL_7B, dtype="bf16", seq=8192, new_tokens=16)
    longest = gpuplan.estimate(MISTRAL_7B, dtype="bf16", seq=16384, new_tokens=16)
    assert longer.kv_cache_bytes == longest.kv_cache_bytes == 32 * 8 * 256 * 2 * 4096


def test_sliding_layers_hold_the_whole_prompt_until_the_first_decode_step():
    # The sliding layer keeps a view into the full prompt's K/V, so its storage stays allocated.
    prefill_only = gpuplan.estimate(MISTRAL_7B, dtype="bf16", seq=16384, new_tokens=0)
    assert prefill_only.kv_cache_bytes == 32 * 8 * 256 * 2 * 16384


def test_gemma3_mixes_sliding_and_full_layers():
    # gemma-3-1b: 26 layers, every 6th global; 512-token window; 1 KV head of 256 dims.
    spec = GEMMA3_1B.spec
    assert spec.num_full_attention_layers == 4
    per_token = 2 * 1 * 256 * 2
    r = gpuplan.estimate(GEMMA3_1B, dtype="bf16", seq=8192, new_tokens=16)
    # full layers hold seq - 1 tokens; after a decode step a sliding layer holds a tensor of the window
    assert r.kv_cache_bytes == per_token * (4 * 8191 + 22 * 512)


def test_mla_cache_in_transformers_is_the_latent():
    # transformers 5 caches DeepSeek-V3's compressed latent (kv_lora_rank 512) and rotary key (64) per
    # token and layer, one head (measured: keys [b, 1, t, 512], values [b, 1, t, 64]).
    r = gpuplan.estimate(DEEPSEEK_R1, dtype="bf16", seq=100, new_tokens=0)
    assert r.kv_cache_bytes == 61 * (512 + 64) * 2 * 100


def test_deepseek_fp8_checkpoint_weights_are_one_byte_plus_block_scales():
    r = gpuplan.estimate(DEEPSEEK_R1, seq=100)
    assert r.dtype == "fp8"
    # 671B loaded parameters, most in FP8: between 0.62 and 0.75 TiB of weights (published: ~690 GB).
    assert 640e9 < r.weights_bytes < 720e9


# ---- quantized formats ----------------------------------------------------------------------------


def test_gptq_int4_group128_bytes_per_weight():
    # 4096x4096 linear, group 128: 0.5 B/weight + (fp16 scale + 4-bit zero) per 128 weights + g_idx.
    q = QuantSpec(method="gptq", bits=4, group_size=128)
    expected = 4096 * 4096 // 2 + 32 * 4096 * (2 + 0.5) + 4096 * 4
    assert quantized_linear_bytes(4096, 4096, q) == expected


def test_nf4_double_quant_overhead_is_about_0_127_bits():
    # QLoRA paper (arXiv:2305.14314, section 3): double quantization cuts the constants from 0.5 to
    # 0.127 bits per parameter.
    q = QuantSpec(method="bnb_4bit", bits=4, group_size=64, bnb_double_quant=True)
    numel = 4096 * 11008
    extra_bits = (quantized_linear_bytes(11008, 4096, q) - numel / 2) * 8 / numel
    assert 0.12 < extra_bits < 0.135


def test_int4_below_int8_below_fp16():
    spec = LLAMA2_7B.spec
    sizes = [weights_bytes(spec, resolve_precision(spec, d)) for d in ("int4", "int8", "fp16", "fp32")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_quantized_keeps_embeddings_in_16_bit():
    spec = LLAMA2_7B.spec
    p = resolve_precision(spec, "int4")
    embed_and_head = 2 * 32000 * 4096 * 2
    assert weights_bytes(spec, p) > embed_and_head
    assert p.compute_dtype in ("fp16", "bf16")


@pytest.mark.parametrize("dtype", ["fp64", "int3", "", "bfloat17"])
def test_unknown_dtype_is_an_input_error(dtype):
    with pytest.raises(InputError):
        resolve_precision(LLAMA2_7B.spec, dtype)


# ---- properties -----------------------------------------------------------------------------------

MODELS = [LLAMA2_7B, LLAMA2_70B, MISTRAL_7B, GEMMA3_1B]


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), batch=st.integers(1, 64), seq=st.integers(2, 65536),
       dtype=st.sampled_from(["fp16", "bf16", "fp32", "int4", "int8", "nf4", "fp8"]),
       attn=st.sampled_from(["sdpa", "eager"]))
def test_monotone_in_batch_and_seq(model, batch, seq, dtype, attn):
    base = gpuplan.estimate(model, dtype=dtype, batch=batch, seq=seq, attn=attn)
    more_batch = gpuplan.estimate(model, dtype=dtype, batch=batch + 1, seq=seq, attn=attn)
    longer = gpuplan.estimate(model, dtype=dtype, batch=batch, seq=seq + 1, attn=attn)
    for bigger in (more_batch, longer):
        assert bigger.kv_cache_bytes >= base.kv_cache_bytes
        assert bigger.peak_allocated_bytes >= base.peak_allocated_bytes
        # total_bytes is the simulated caching allocator's need (gpuplan/calc/allocator.py), which is not
        # monotone: one token more can change which freed block a tensor lands in, and so what stays stranded.
        # It never drops below the live tensors plus the memory outside torch.
        assert bigger.total_bytes >= bigger.peak_allocated_bytes + NON_TORCH_BYTES


@settings(max_examples=60, deadline=None)
@given(model=st.sampled_from(MODELS), batch=st.integers(1, 64), seq=st.integers(2, 65536))
def test_fp8_kv_is_half_of_fp16_everywhere(model, batch, seq):
    fp16 = gpuplan.estimate(model, dtype="bf16", kv_dtype="fp16", batch=batch, seq=seq)
    fp8 = gpuplan.estimate(model, dtype="bf16", kv_dtype="fp8", batch=batch, seq=seq)
    assert 2 * fp8.kv_cache_bytes == fp16.kv_cache_bytes


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(MODELS), batch=st.integers(1, 16), seq=st.integers(2, 32768))
def test_components_add_up(model, batch, seq):
    r = gpuplan.estimate(model, dtype="fp16", batch=batch, seq=seq)
    assert r.peak_allocated_bytes == r.weights_bytes + r.kv_cache_bytes + r.activation_bytes
    assert r.total_bytes == r.peak_allocated_bytes + r.overhead_bytes
    assert min(r.weights_bytes, r.kv_cache_bytes, r.activation_bytes, r.overhead_bytes) >= 0


def test_eager_attention_needs_more_than_sdpa_for_long_prompts():
    sdpa = gpuplan.estimate(LLAMA2_7B, dtype="fp16", seq=4096, batch=4, attn="sdpa")
    eager = gpuplan.estimate(LLAMA2_7B, dtype="fp16", seq=4096, batch=4, attn="eager")
    # eager materializes [batch, heads, q, k] scores: 4 x 32 x 4095^2 x 8 bytes is 16 GiB on its own
    assert eager.activation_bytes - sdpa.activation_bytes > 15 * GiB


@pytest.mark.parametrize("kwargs", [
    {"batch": 0}, {"batch": -1}, {"seq": 0}, {"seq": 10, "new_tokens": 10}, {"batch": 10**9},
    {"seq": 2**40},
])
def test_bad_workloads_are_input_errors(kwargs):
    with pytest.raises(InputError):
        gpuplan.estimate(LLAMA2_7B, **kwargs)


# ---- transformers over several GPUs (device_map="auto") ----------------------------------------------


@pytest.mark.parametrize("model,gpus", [(LLAMA2_7B, 2), (LLAMA2_70B, 4), (GEMMA3_1B, 3), (DEEPSEEK_R1, 8)])
def test_split_covers_every_layer_once_and_keeps_the_weights(model, gpus):
    from gpuplan.calc.precision import resolve_precision
    from gpuplan.engines.device_map import balanced_split

    spec = model.spec
    shares = balanced_split(spec, resolve_precision(spec, "bf16"), gpus)
    assert sum(s.layers for s in shares) == spec.num_hidden_layers
    starts = [s.first_layer for s in shares if s.layers]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(s.weights_bytes for s in shares) == weights_bytes(spec, resolve_precision(spec, "bf16"))
    # The embedding sits on the first GPU that holds anything: accelerate keeps room for the largest
    # remaining module free on GPU 0, so a small model with a large vocabulary can leave GPU 0 empty.
    holders = [s for s in shares if s.holds_embedding]
    assert len(holders) == 1 and holders[0].index == min(s.index for s in shares if s.weights_bytes)


def test_split_kv_adds_up_and_the_largest_gpu_is_reported():
    single = gpuplan.estimate(LLAMA2_7B, dtype="fp16", batch=8, seq=4096)
    split = gpuplan.estimate(LLAMA2_7B, dtype="fp16", batch=8, seq=4096, pipeline_parallel=2)
    assert sum(g.kv_cache_bytes for g in split.per_gpu) == single.kv_cache_bytes
    assert split.total_bytes == max(g.total_bytes for g in split.per_gpu)
    assert split.gpus == 2 and split.total_bytes < single.total_bytes


def test_transformers_has_no_tensor_parallelism():
    with pytest.raises(InputError, match="pipeline-parallel-size"):
        gpuplan.estimate(LLAMA2_7B, tensor_parallel=2)
