"""generate()'s allocation sequence for hybrid models, layer kind by layer kind, against the cache code of
transformers (cache_utils.py, 5.17 and 5.25 alike for these layers):

* an attention layer (DynamicLayer.update) grows by torch.cat: a new keys tensor one token longer at every
  decode step, the old one freed, then the same for the values;
* a sparse-attention layer (DynamicIndexedLayer.update_indexer) grows its indexer keys the same way;
* a state layer (LinearAttentionLayer) creates conv_states (torch.zeros, the model's dtype) and
  recurrent_states (torch.zeros_like of the scan's float32 state) once, at the prefill, and updates both in
  place (copy_) afterwards: no cache tensor is allocated at a decode step.

The expected sizes are written out by hand from those shapes; the configs are small versions of the ones
benchmarks/measure_hybrid_generate.py measures (the same layer kinds, fewer layers and experts).
"""

from __future__ import annotations

import pytest

from gpuplan.calc.precision import resolve_precision
from gpuplan.calc.workload import Workload
from gpuplan.engines.generate import estimate_memory
from gpuplan.engines.transformers import cache_bytes
from gpuplan.engines.transformers_allocations import generate_trace
from gpuplan.models.families import config_to_spec

QWEN3_NEXT = {
    "model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 4, "full_attention_interval": 4,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16,
    "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "intermediate_size": 5120, "decoder_sparse_step": 1,
    "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
NEMOTRON_H = {
    "model_type": "nemotron_h", "hidden_size": 2688, "hybrid_override_pattern": "M*-E",
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "mamba_num_heads": 64,
    "mamba_head_dim": 64, "ssm_state_size": 128, "conv_kernel": 4, "n_groups": 8, "expand": 2,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "n_shared_experts": 1, "intermediate_size": 1856,
    "vocab_size": 131072, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "mlp_hidden_act": "relu2",
}
DEEPSEEK_V32 = {
    "model_type": "deepseek_v32", "hidden_size": 2048, "num_hidden_layers": 2, "first_k_dense_replace": 1,
    "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": 768, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "index_n_heads": 32,
    "index_head_dim": 128, "index_topk": 2048, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "n_shared_experts": 1, "moe_intermediate_size": 768, "intermediate_size": 6144, "n_group": 1,
    "topk_group": 1, "vocab_size": 129280, "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
BF16 = 2
FP32 = 4
BATCH, PROMPT = 2, 512



def _live_cache_bytes(trace) -> int:
    """Bytes of the cache's tensors (the labelled ones) still allocated at the end of the sequence."""
    live: dict[int, int] = {}
    for action, tensor, size in trace.events:
        if action == "a" and tensor in trace.labels:
            live[tensor] = size
        elif action == "f":
            live.pop(tensor, None)
    return sum(live.values())

def _trace(raw: dict, *, batch: int = BATCH, prompt: int = PROMPT, new_tokens: int = 3):
    spec = config_to_spec(dict(raw))
    precision = resolve_precision(spec, "bf16")
    workload = Workload(batch=batch, seq=prompt + new_tokens, new_tokens=new_tokens)
    return spec, precision, workload, generate_trace(spec, workload, precision, 10**9)


def _cache_events(trace) -> list[tuple[str, str, int]]:
    """The cache's allocations and frees in order: (a/f, label, bytes)."""
    sizes = {tensor: size for action, tensor, size in trace.events if action == "a"}
    return [(action, trace.labels[tensor], sizes[tensor]) for action, tensor, _ in trace.events
            if tensor in trace.labels and action in "af"]


def _steps(trace) -> list[list[tuple[str, str, int]]]:
    """The cache events of the prefill, then of each of the two decode steps (split where the attention mask
    and the input ids grow after a forward: int64 [batch, length], the only tensors of that size)."""
    steps: list[list[tuple[str, str, int]]] = [[]]
    ids_sizes = {BATCH * (PROMPT + k) * 8 for k in (1, 2)}
    sizes = {tensor: size for action, tensor, size in trace.events if action == "a"}
    seen_ids = set()
    for action, tensor, size in trace.events:
        if action == "a" and size in ids_sizes and size not in seen_ids:
            seen_ids.add(size)
            steps.append([])
        if tensor in trace.labels and action in "af":
            steps[-1].append((action, trace.labels[tensor], sizes[tensor]))
    return steps


def test_qwen3_next_state_layers_allocate_their_cache_once():
    _, _, _, trace = _trace(QWEN3_NEXT)
    prefill, *decode = _steps(trace)
    # Layers 0-2 gated DeltaNet: conv_states zeros(batch, 2 x 16 x 128 + 32 x 128 channels, kernel 4) in bf16,
    # recurrent_states zeros_like(float32 [batch, 32 value heads, 128, 128]).
    conv, recurrent = BATCH * 8192 * 4 * BF16, BATCH * 32 * 128 * 128 * FP32
    assert conv == 131_072 and recurrent == 4_194_304
    # Layer 3 full attention: keys = cat([], k) [batch, 2 kv heads, 512, 256], then values of the same shape.
    kv = BATCH * 2 * PROMPT * 256 * BF16
    assert prefill == [("a", "layer 0 conv state", conv), ("a", "layer 0 recurrent state", recurrent),
                       ("a", "layer 1 conv state", conv), ("a", "layer 1 recurrent state", recurrent),
                       ("a", "layer 2 conv state", conv), ("a", "layer 2 recurrent state", recurrent),
                       ("a", "layer 3 keys", kv), ("a", "layer 3 values", kv)]
    assert len(decode) == 2
    for step, tokens in zip(decode, (PROMPT + 1, PROMPT + 2), strict=True):
        old = BATCH * 2 * (tokens - 1) * 256 * BF16
        new = BATCH * 2 * tokens * 256 * BF16
        # Only the attention layer's cache moves: cat makes the longer keys, the old ones are dropped as
        # self.keys is rebound, then the values.
        assert step == [("a", "layer 3 keys", new), ("f", "layer 3 keys", old),
                        ("a", "layer 3 values", new), ("f", "layer 3 values", old)]


def test_gated_delta_net_decode_step_makes_float32_temporaries_of_the_state():
    """torch_recurrent_gated_delta_rule: state * decay, state * k (summed), k x delta, their sum, state * q
    (summed): five float32 tensors of the state's shape per layer and step, besides the cache's copy_."""
    _, _, _, trace = _trace(QWEN3_NEXT, new_tokens=2)
    recurrent = BATCH * 32 * 128 * 128 * FP32
    last_step = max(i for i, (action, _, size) in enumerate(trace.events) if size == BATCH * (PROMPT + 1) * 8)
    temporaries = [size for action, tensor, size in trace.events[last_step:]
                   if action == "a" and size == recurrent and tensor not in trace.labels]
    assert len(temporaries) == 5 * 3  # three gated DeltaNet layers


def test_nemotron_h_mamba_state_attention_growth_and_ffn_layers_without_cache():
    _, _, _, trace = _trace(NEMOTRON_H)
    prefill, *decode = _steps(trace)
    # Layer 0 Mamba-2: conv over 64 x 64 + 2 x 8 groups x 128 channels, kernel 4, bf16; the SSM state
    # [batch, 64 heads, 64, 128] in float32 (mamba2_chunk_scan runs on hidden_states.float()).
    conv, recurrent = BATCH * 6144 * 4 * BF16, BATCH * 64 * 64 * 128 * FP32
    kv = BATCH * 2 * PROMPT * 128 * BF16  # layer 1 attention: [batch, 2 kv heads, 512, 128]
    assert prefill == [("a", "layer 0 conv state", conv), ("a", "layer 0 recurrent state", recurrent),
                       ("a", "layer 1 keys", kv), ("a", "layer 1 values", kv)]  # layers 2, 3: MLP, MoE
    for step, tokens in zip(decode, (PROMPT + 1, PROMPT + 2), strict=True):
        old, new = (BATCH * 2 * t * 128 * BF16 for t in (tokens - 1, tokens))
        assert step == [("a", "layer 1 keys", new), ("f", "layer 1 keys", old),
                        ("a", "layer 1 values", new), ("f", "layer 1 values", old)]


def test_mamba2_decode_step_temporaries():
    """mamba2_selective_state_update: dt x A and its exp, state x dA and + dBx in float32; dB, dB x x and
    the state cast back in bf16: all of the state's shape, none of them the cache's."""
    _, _, _, trace = _trace(NEMOTRON_H, new_tokens=2)
    elems = BATCH * 64 * 64 * 128
    last_step = max(i for i, (action, _, size) in enumerate(trace.events) if size == BATCH * (PROMPT + 1) * 8)
    sizes = [size for action, tensor, size in trace.events[last_step:] if action == "a" and tensor not in
             trace.labels]
    assert sizes.count(elems * FP32) == 4 and sizes.count(elems * BF16) == 3


def test_deepseek_v32_latent_and_indexer_keys_grow_by_cat():
    _, _, _, trace = _trace(DEEPSEEK_V32)
    prefill, *decode = _steps(trace)

    def layer(i: int, tokens: int) -> list[tuple[str, str, int]]:
        # The compressed latent [batch, 1, t, 512] as keys, the rotary key [batch, 1, t, 64] as values, the
        # indexer's keys [batch, t, 128]: all bf16.
        return [("a", f"layer {i} keys", BATCH * tokens * 512 * BF16),
                ("a", f"layer {i} values", BATCH * tokens * 64 * BF16),
                ("a", f"layer {i} indexer keys", BATCH * tokens * 128 * BF16)]

    assert prefill == layer(0, PROMPT) + layer(1, PROMPT)
    for step, tokens in zip(decode, (PROMPT + 1, PROMPT + 2), strict=True):
        expected = []
        for i in range(2):
            keys, values, indexer = layer(i, tokens)
            old_keys, old_values, old_indexer = layer(i, tokens - 1)
            expected += [keys, ("f", *old_keys[1:]), values, ("f", *old_values[1:]), indexer,
                         ("f", *old_indexer[1:])]
        assert step == expected


@pytest.mark.parametrize("raw", [QWEN3_NEXT, NEMOTRON_H, DEEPSEEK_V32], ids=lambda r: r["model_type"])
@pytest.mark.parametrize(("prompt", "new_tokens"), [(512, 3), (3, 2), (100, 1)])
def test_cache_left_by_the_sequence_is_cache_bytes(raw, prompt, new_tokens):
    """After the whole sequence, the cache's live tensors are what cache_bytes counts (a prompt shorter than
    the convolution's kernel included: its padding is a temporary)."""
    spec, precision, workload, trace = _trace(raw, prompt=prompt, new_tokens=new_tokens)
    expected = cache_bytes(spec, BATCH, prompt + new_tokens - 1, precision.kv_bytes, decoded=new_tokens >= 2)
    assert _live_cache_bytes(trace) == expected


def test_recurrent_state_is_float32_in_cache_bytes():
    spec = config_to_spec(dict(QWEN3_NEXT))
    full = 2 * 2 * 1000 * 256 * BF16  # one attention layer, keys and values, 1000 tokens, batch 1
    state = 3 * (8192 * 4 * BF16 + 32 * 128 * 128 * FP32)
    assert cache_bytes(spec, 1, 1000, BF16, decoded=True) == full + state


@pytest.mark.parametrize("raw", [QWEN3_NEXT, NEMOTRON_H, DEEPSEEK_V32], ids=lambda r: r["model_type"])
def test_simulated_peak_follows_the_estimated_peak(raw):
    """The sequence holds the tensors the analytic model counts: the allocator simulation's peak of live
    tensors stays within 2% of estimate_generate's (the slack comes from the simulation)."""
    from gpuplan.calc.weights import weights_bytes
    from gpuplan.engines.transformers import estimate_generate
    from gpuplan.engines.transformers_allocations import allocator_fit

    spec = config_to_spec(dict(raw))
    precision = resolve_precision(spec, "bf16")
    weights = weights_bytes(spec, precision)
    for prompt in (512, 4096):
        workload = Workload(batch=1, seq=prompt + 32, new_tokens=32)
        fit = allocator_fit(spec, workload, precision, weights)
        peak = estimate_generate(spec, workload, precision, weights).peak_allocated_bytes
        assert abs(fit.peak_allocated_bytes - peak) <= 0.02 * peak, (prompt, fit.peak_allocated_bytes, peak)
        total = estimate_memory(spec, workload, precision).total_bytes
        assert total >= peak


def test_float32_logits_stay_bound_through_the_next_forward():
    """generation/utils.py _sample: next_token_logits = outputs.logits[:, -1].to(copy=True, dtype=float32) is
    rebound only after the next forward, so each step's float32 copy is freed after the next one is made,
    with that forward's cache growth in between."""
    _, _, _, trace = _trace(QWEN3_NEXT)
    scores = BATCH * 151936 * FP32
    made = [(i, tensor) for i, (action, tensor, size) in enumerate(trace.events) if action == "a" and size == scores]
    freed = {tensor: i for i, (action, tensor, _) in enumerate(trace.events) if action == "f"}
    assert len(made) == 3  # after the prefill and after each of the two decode steps
    for (i, tensor), (j, _) in zip(made, made[1:], strict=False):
        grown = [k for k in range(i, j) if trace.events[k][0] == "a" and trace.events[k][1] in trace.labels]
        assert grown and freed[tensor] > j


@pytest.mark.parametrize(("prompt", "new_tokens"), [(300, 3), (5, 2)])
def test_deepseek_v4_compressed_layers_leave_what_cache_bytes_counts(prompt, new_tokens):
    """DeepSeek-V4's compressed layers (a window of K/V plus compressed entries) in the small config transformers
    recorded (tests/fixtures/architectures/deepseek_v4.json): the sequence leaves what cache_bytes counts."""
    import json
    from pathlib import Path

    raw = json.loads((Path(__file__).parent / "fixtures" / "architectures" / "deepseek_v4.json").read_text())
    spec, precision, workload, trace = _trace(raw["small_config"], prompt=prompt, new_tokens=new_tokens)
    assert any(lc.kind == "compressed" for lc in spec.layer_caches)
    expected = cache_bytes(spec, BATCH, prompt + new_tokens - 1, precision.kv_bytes, decoded=new_tokens >= 2)
    assert _live_cache_bytes(trace) == expected
