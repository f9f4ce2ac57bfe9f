"""Memory of Hugging Face transformers ``generate()``: prefill of the prompt, then greedy decoding.

The peak torch allocation (``torch.cuda.max_memory_allocated``) is the larger of two moments:

* **prefill**, in the last decoder layer: weights + every layer's K/V for the whole prompt + the hidden
  states the forward loop keeps alive + the largest transient of that layer (its MLP, or its attention);
* **decode**: weights + the cache near its final length + the copy ``torch.cat`` makes when the dynamic
  cache grows (transformers/cache_utils.py, DynamicLayer.update).

Every term below names the line of transformers (5.x) or torch that allocates it. They were checked
against memory measured on an H200 (tests/fixtures/measurements/, docs/accuracy.md): the prefill is the
peak in every measured case. ``T = batch x prompt`` token rows; ``e`` is the compute dtype's bytes.
"""


from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
from gpuplan.calc.precision import Precision
from gpuplan.calc.workload import Workload
from gpuplan.models.spec import LayerCache, ModelSpec, StateMixerSpec

AttnImpl = Literal["sdpa", "eager", "flash_attention_2"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")

FP32 = 4
BOOL = 1
# A DynamicSlidingWindowLayer also holds its window as a 0-d int64 tensor (_sliding_window_tensor): not
# K/V data, left out of kv_cache_bytes (8 bytes a layer).
SLIDING_WINDOW_SCALAR_BYTES = 8

# Families whose attention goes through transformers' shared ``eager_attention_forward`` (modeling_llama.py
# and copies): scores = matmul(q, k^T) * scaling (+ mask), then softmax(dtype=float32).to(dtype).
_GPT2_STYLE = {"gpt2"}
# Families that keep their MoE routing weights in float32 (the sigmoid scores of DeepSeek-V2/V3 times
# routed_scaling_factor, modeling_deepseek_v3.py); the others cast them to the compute dtype
# (modeling_qwen2_moe.py, modeling_mixtral.py: routing_weights.to(hidden_states.dtype)).
_FP32_ROUTING = {"deepseek_v2", "deepseek_v3"}
_OWN_ATTENTION = {"falcon"}
# Families whose decoder loop keeps the embedding output alive next to the layer input (the model's
# forward binds ``inputs_embeds`` and never releases it before the loop ends: modeling_llama.py
# LlamaModel.forward and the models generated from it).
_PLAIN_FFN_COMPOSITE_ACTIVATIONS = {"gelu_new", "gelu_fast"}


class TransformersMemory(BaseModel):
    """Byte components of one generate() call, per GPU."""

    model_config = ConfigDict(frozen=True)

    weights_bytes: int
    kv_cache_bytes: int
    prefill_peak_bytes: int
    decode_peak_bytes: int
    peak_allocated_bytes: int
    activation_bytes: int
    largest_transient_bytes: int
    """The largest single temporary tensor: what a caching allocator may keep reserved but unusable."""
    components: dict[str, int]


def _kv_bytes_per_token(spec: ModelSpec, kv_bytes: int) -> int:
    """K and V of one token in one layer. For MLA, transformers 5 caches the compressed latent as the
    "key" (kv_lora_rank) and the shared rotary key as the "value" (qk_rope_head_dim), one head each
    (modeling_deepseek_v3.py; measured: keys [b, 1, t, 512], values [b, 1, t, 64] for DeepSeek-V3)."""
    if spec.mla is not None:
        return spec.mla.latent_dim * kv_bytes
    return spec.num_key_value_heads * (spec.head_dim + spec.v_head_dim) * kv_bytes


def layer_cache_bytes(lc: LayerCache, batch: int, tokens: int, kv_bytes: int, *, decoded: bool) -> int:
    """Bytes one layer of the cache transformers builds from ``layer_types`` holds for ``batch`` sequences
    (cache_utils.py: DynamicLayer, DynamicSlidingWindowLayer for sliding and chunked layers,
    DynamicIndexedLayer adding the indexer keys, LinearAttentionLayer holding ``conv_states`` and
    ``recurrent_states`` of fixed shapes, the recurrent one float32 where the torch scan makes it so
    (``LayerCache.recurrent_bytes``), DummyLayer for layers that keep nothing)."""
    kept = tokens if lc.window is None or not decoded else min(tokens, lc.window)
    per_token = lc.per_token_elems * kv_bytes if lc.kind in ("attention", "hybrid", "compressed") else 0
    fixed = 0
    if lc.kind in ("state", "hybrid"):
        fixed = lc.conv_elems * kv_bytes + lc.recurrent_elems * (lc.recurrent_bytes or kv_bytes)
    if lc.kind == "compressed":
        fixed = compressed_elems(lc, tokens, decoded) * kv_bytes
    return batch * (kept * per_token + fixed)


def compressed_elems(lc: LayerCache, tokens: int, decoded: bool) -> int:
    """What a DeepSeek-V4 compressed layer keeps besides its window (modeling_deepseek_v4.py
    DeepseekV4HCACache / DeepseekV4CSACache): one entry per ``compress_rate`` tokens; the buffer of source
    tokens not yet compressed, a view into the projection it was cut from, so after the prompt it holds the
    whole prompt's projection and after a decode step the ``(tokens - 1) % rate + 1`` tokens concatenated
    since the last window closed; and, once a window has closed, the overlap state."""
    rate = lc.compress_rate
    buffered = tokens if not decoded else (tokens - 1) % rate + 1
    overlap = lc.overlap_elems if tokens >= rate else 0
    return tokens // rate * lc.compressed_dim + buffered * lc.buffer_dim + overlap


def cache_bytes(spec: ModelSpec, batch: int, tokens: int, kv_bytes: int, *, decoded: bool) -> int:
    """Bytes a DynamicCache holds for ``tokens`` tokens per sequence.

    Sliding-window layers (DynamicSlidingWindowLayer.update) return the full K/V and keep a slice of it as
    their state: the slice is a view, so the full tensor's storage stays allocated until the next update.
    After the prompt alone (``decoded=False``) every layer therefore holds the whole prompt; after a decode
    step a sliding layer holds a fresh tensor of ``window`` tokens (``window - 1`` kept plus the new one).
    """
    if spec.layer_caches:
        return sum(layer_cache_bytes(lc, batch, tokens, kv_bytes, decoded=decoded) for lc in spec.layer_caches)
    per_token = _kv_bytes_per_token(spec, kv_bytes)
    total = 0
    for window in spec.layer_windows:
        kept = tokens if window is None or not decoded else min(tokens, window)
        total += kept * per_token
    return batch * total


def _eager_score_bytes(spec: ModelSpec, compute_dtype: str) -> int:
    """Bytes per element of the [batch, heads, q, k] score matrix at eager attention's peak."""
    e = FP32 if compute_dtype == "fp32" else 2
    if spec.model_type in _GPT2_STYLE:
        # modeling_gpt2.py eager_attention_forward: matmul scores and softmax in the compute dtype.
        return 2 * e
    if e == 2 and spec.model_type not in _OWN_ATTENTION:
        # softmax(scores, dtype=float32): ATen fuses the upcast only for float16 input ("half_to_float",
        # aten/src/ATen/native/SoftMax.cpp); bfloat16 is first copied to float32. Peak: masked scores (e) +
        # fp32 copy (4) + fp32 probabilities (4) for bf16; scores (2) + fp32 probabilities (4) + the
        # .to(float16) result (2) for fp16.
        return 10 if compute_dtype == "bf16" else 8
    # fp32 (no conversion): masked scores + probabilities; falcon keeps scores, scores + mask and the
    # softmax in the compute dtype (modeling_falcon.py FalconAttention.forward).
    return 8 if e == FP32 else 6 + e


def _mlp_transient(spec: ModelSpec, t: int, e: int) -> dict[str, int]:
    h = spec.hidden_size
    if spec.moe is not None and spec.moe.num_moe_layers:
        moe = spec.moe
        samples = t * moe.experts_per_token
        width = moe.expert_intermediate_size
        w = FP32 if spec.model_type in _FP32_ROUTING else e
        # grouped_mm_experts_forward (transformers/integrations/moe.py): the token rows gathered in expert
        # order [S, h] and the down projection's output [S, h] stay bound while the output is weighted by
        # the routing weights ([S, h] in their dtype) and put back in token order ([S, h] again), with
        # S = tokens x experts_per_token. Earlier in the block the gate/up output [S, 2I] and the activated
        # product [S, I] are the largest.
        routed = max(samples * h * (2 * e + 2 * w), samples * (h + 4 * width) * e)
        shared = 0
        if moe.shared_expert_intermediate_size:
            # The shared expert runs after the routed ones, whose output [T, h] is held meanwhile.
            shared = 3 * t * moe.shared_expert_intermediate_size * e + t * h * e
        dense = 3 * t * spec.intermediate_size * e if moe.num_dense_layers else 0
        return {"mlp": max(routed, shared, dense)}
    width = spec.intermediate_size
    if spec.ffn_gated:
        if spec.model_type in ("phi3", "chatglm"):
            # Fused gate_up_proj [T, 2I] stays alive while act(gate) * up is formed (modeling_phi3.py).
            return {"mlp": 4 * t * width * e}
        # act_fn(gate_proj(x)) * up_proj(x): the activated gate, up and their product (modeling_llama.py).
        return {"mlp": 3 * t * width * e}
    if spec.hidden_act in _PLAIN_FFN_COMPOSITE_ACTIVATIONS:
        # NewGELUActivation is written in Python (activations.py): fc output, 0.5*x and two temporaries of
        # the tanh chain exist together.
        return {"mlp": 4 * t * width * e}
    # fc1 output and its activation (one fused kernel: relu, gelu, gelu_pytorch_tanh).
    return {"mlp": 2 * t * width * e}


def _attention_transient(spec: ModelSpec, batch: int, prompt: int, compute_dtype: str, attn: AttnImpl,
                         masked: bool) -> dict[str, int]:
    e = FP32 if compute_dtype == "fp32" else 2
    t = batch * prompt
    heads, kv_heads = spec.num_attention_heads, spec.num_key_value_heads
    d, dv = spec.head_dim, spec.v_head_dim
    q = t * heads * d * e
    # apply_rotary_pos_emb: q*cos, rotate_half(q) (a cat of two halves) and its product with sin.
    rope = 3 * q
    scores = batch * heads * prompt * prompt
    grouped = kv_heads != heads
    expanded_kv = t * heads * (d + dv) * e if grouped else 0
    if attn == "eager":
        # repeat_kv expands K/V to every head before the matmul (eager_attention_forward).
        return {"attention": q + expanded_kv + scores * _eager_score_bytes(spec, compute_dtype)}
    fp32_grouped = e == FP32 and grouped and not masked
    if fp32_grouped or spec.model_type in _OWN_ATTENTION and grouped:
        # Without a kernel that takes this input (flash needs 16-bit; the memory-efficient kernel has no
        # enable_gqa; falcon passes a 1-head K/V to be broadcast), torch runs the math SDPA
        # (aten/src/ATen/native/transformers/attention.cpp): float32 scores, float32 probabilities and
        # the boolean "all -inf" mask of _safe_softmax, with float32 copies of q and of K/V per head.
        return {"attention": scores * (2 * FP32 + BOOL) + t * heads * (d + d + dv) * FP32 + rope}
    # Flash / memory-efficient kernels keep the scores on chip: the output and a logsumexp per row.
    # With a mask transformers passes K/V expanded per head (repeat_kv when enable_gqa is not possible).
    out = t * heads * dv * e + batch * heads * prompt * FP32
    return {"attention": q + rope + out + (expanded_kv if masked else 0)}


def _largest_tensor(spec: ModelSpec, batch: int, prompt: int, compute_dtype: str, attn: AttnImpl,
                    sliding_active: bool) -> int:
    """Size of the largest single temporary tensor of the prefill (the blocks above, one tensor each)."""
    e = FP32 if compute_dtype == "fp32" else 2
    t = batch * prompt
    scores = batch * spec.num_attention_heads * prompt * prompt
    sizes = [t * spec.hidden_size * FP32]  # a norm's float32 upcast
    if spec.moe is not None and spec.moe.num_moe_layers:
        samples = t * spec.moe.experts_per_token
        w = FP32 if spec.model_type in _FP32_ROUTING else e
        sizes += [samples * spec.hidden_size * w, samples * 2 * spec.moe.expert_intermediate_size * e]
    sizes.append(t * spec.intermediate_size * e * (2 if spec.model_type in ("phi3", "chatglm") else 1))
    if attn == "eager":
        upcast = spec.model_type not in _GPT2_STYLE | _OWN_ATTENTION
        sizes.append(scores * (FP32 if upcast else e))
    elif e == FP32 and spec.num_key_value_heads != spec.num_attention_heads and not sliding_active:
        sizes.append(scores * FP32)
    return max(sizes)


# torch_chunk_gated_delta_rule's chunk_size (transformers 5.x modeling_qwen3_next.py), the path generate()
# takes without the flash-linear-attention kernels.
GATED_DELTA_NET_CHUNK = 64


def _state_mixer_transient(spec: ModelSpec, batch: int, prompt: int, e: int) -> int:
    """Prefill temporaries of a gated DeltaNet layer (modeling_qwen3_next.py Qwen3NextGatedDeltaNet.forward and
    torch_chunk_gated_delta_rule). Inside the chunk scan, float32 tensors over the padded sequence stay alive:
    query, key, k_beta, the decayed k_beta and k_cumdecay (key width, q and k repeated to the value heads),
    value, v_beta, new_values and core_attn_out (value width), and three [chunk x chunk] matrices per chunk
    (pairwise decay, the UT system, the intra-chunk attention). Around it, in the compute dtype: the qkvz
    projection, the convolved q/k/v and the repeated q and k."""
    m = spec.state_mixer
    if m is None or prompt <= 1:
        return 0
    if m.kind == "mamba2":
        return _mamba2_transient(m, batch, prompt, e)
    chunk = GATED_DELTA_NET_CHUNK
    padded = batch * (-(-prompt // chunk) * chunk)
    t = batch * prompt
    scan = padded * m.heads * (5 * m.key_dim + 4 * m.value_dim + 3 * chunk) * FP32
    key, value = m.key_heads * m.key_dim, m.heads * m.value_dim
    outer = t * ((2 * key + 2 * value) + (2 * key + value) + 2 * m.heads * m.key_dim) * e
    return scan + outer


def _mamba2_transient(m: StateMixerSpec, batch: int, prompt: int, e: int) -> int:
    """Prefill temporaries of a Mamba-2 mixer on the torch path (modeling_nemotron_h.py and the copies in
    modeling_bamba.py, modeling_granitemoehybrid.py, modeling_falcon_h1.py, modeling_mamba2.py:
    NemotronHMamba2Mixer.forward and mamba2_chunk_scan). In the compute dtype: in_proj's output and the
    convolved x/B/C. In float32 over the sequence padded to the chunk: x, the D residual, B and C repeated to
    every head, the segment-sum decay L [heads, chunk] per token; and the largest broadcast product, one at a
    time: C x B over [chunk, chunk, heads, d_state] per chunk (G_intermediate), M x x over [chunk, chunk,
    heads, head_dim] (Y_diag), or B x x and C x states over [heads, head_dim, d_state] per token."""
    h, d, n, chunk = m.heads, m.value_dim, m.state_size, m.chunk
    padded = batch * (-(-prompt // chunk) * chunk)
    t = batch * prompt
    outer = t * (m.in_proj + m.conv_dim) * e
    base = padded * (2 * h * d + 2 * h * n + h * chunk) * FP32
    largest = padded * max(chunk * h * n, chunk * h * d, h * d * n) * FP32
    return outer + base + largest


def _indexer_transient(spec: ModelSpec, batch: int, prompt: int) -> int:
    """DeepSeek sparse attention's indexer over the prompt (modeling_deepseek_v32.py DeepseekV32Indexer.forward,
    the same from 5.17.0 to 5.25.0): ``torch.matmul(q.float(), k.transpose(-1, -2).float().unsqueeze(1))``,
    q [b, s, heads, d] against k [b, 1, d, t], gives float32 scores [b, s, heads, t]. torch.matmul broadcasts
    batch dims by expanding both sides and reshaping them to bmm's 3-D input (aten/src/ATen/native/
    LinearAlgebra.cpp _matmul_impl: ``tensor2.expand(...).reshape({expand_batch_product, m2, p})``): with more
    than one sequence the key's broadcast dim cannot merge with the batch dim, so the float32 keys are copied
    once per query token, [b, s, d, t], next to the scores being written and the float32 q and k. Then the
    scaled scores and their relu are each a new tensor: two score tensors at a time."""
    heads = spec.mla.index_heads if spec.mla is not None else 0
    dim = max((lc.indexer_dim for lc in spec.layer_caches), default=0)
    scores = batch * prompt * heads * prompt * FP32
    operands = batch * prompt * heads * dim * FP32 + batch * prompt * dim * FP32
    broadcast_copy = batch * prompt * dim * prompt * FP32 if batch > 1 else 0
    return max(operands + broadcast_copy + scores, 2 * scores)


def _stream_tensors(spec: ModelSpec) -> int:
    """[T, hidden] tensors alive across the last layer's MLP: the embedding output (held by the model's
    forward), the layer input (held by the loop), the residual and the normed input of the block. GPT-2's
    block also keeps its attention output bound to a name (``attn_output``, modeling_gpt2.py GPT2Block)."""
    count = 4 if spec.num_hidden_layers > 1 else 3
    return count + 1 if spec.model_type in _GPT2_STYLE else count


def estimate_generate(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                      attn: AttnImpl = "sdpa", *, holds_embedding: bool = True,
                      holds_lm_head: bool = True) -> TransformersMemory:
    """One GPU's memory for generate(). With the model split over GPUs (device_map), ``spec`` holds the
    decoder layers of this GPU; the embedding output stays on the GPU that holds the embedding, the
    logits on the one that holds the lm_head."""
    e = precision.compute_bytes
    batch, prompt = workload.batch, workload.prompt_tokens
    kv = precision.kv_bytes
    decoded = workload.new_tokens >= 2
    cached_tokens = workload.seq - 1 if workload.new_tokens >= 1 else workload.seq
    kv_final = cache_bytes(spec, batch, cached_tokens, kv, decoded=decoded)
    kv_prompt = cache_bytes(spec, batch, prompt, kv, decoded=False)
    h = spec.hidden_size
    t = batch * prompt

    # A boolean [batch, 1, q, kv] mask exists for the whole forward when some layer cannot use a plain
    # causal kernel: sliding windows shorter than the prompt (masking_utils.py sliding_window_mask), or
    # eager attention, which adds a 4-D float mask in the compute dtype (masking_utils.py eager_mask).
    sliding_active = any(w is not None and w < prompt for w in spec.layer_windows)
    full_layers = any(w is None or w >= prompt for w in spec.layer_windows)
    if attn == "eager":
        mask = batch * prompt * prompt * e
    elif sliding_active:
        mask = batch * prompt * prompt * BOOL
    else:
        mask = 0
    attention = max(
        _attention_transient(spec, batch, prompt, precision.compute_dtype, attn, masked=kind)["attention"]
        for kind in ((False,) if not sliding_active else (True, False) if full_layers else (True,))
    )
    mlp = _mlp_transient(spec, t, e)["mlp"]
    if attn == "eager":
        # The decoder layer binds the attention probabilities it gets back (``hidden_states, _ =
        # self.self_attn(...)`` in modeling_llama.py; ``attn_output, self_attn_weights`` in modeling_gpt2.py):
        # the [batch, heads, q, k] tensor in the compute dtype lives on through the layer's MLP.
        mlp += batch * spec.num_attention_heads * prompt * prompt * e
    transient = {"attention": attention, "mlp": mlp}
    if spec.state_mixer is not None:
        transient["state_mixer"] = _state_mixer_transient(spec, batch, prompt, e)
    if spec.mla is not None and spec.mla.index_heads:
        transient["indexer"] = _indexer_transient(spec, batch, prompt)
    layer_peak = max(transient.values())
    stream = (_stream_tensors(spec) - (0 if holds_embedding else 1)) * t * h * e
    # generate() keeps the logits of the last position only (logits_to_keep=1) and copies them to fp32
    # (generation/utils.py: outputs.logits[:, -1, :].to(copy=True, dtype=torch.float32)).
    logits = batch * spec.vocab_size * (e + FP32) if holds_lm_head else 0
    workspace = CUBLAS_WORKSPACE_BYTES
    prefill_peak = weights_bytes + kv_prompt + stream + mask + layer_peak + logits + workspace

    # Decode: the cache at its final length, plus one layer's K (then V) being concatenated into a new
    # tensor while the old one is still referenced.
    growth = 0
    if decoded:
        growth = batch * cached_tokens * spec.num_key_value_heads * max(spec.head_dim, spec.v_head_dim) * kv
    moe_gather = 0
    moe = spec.moe
    if decoded and moe is not None and moe.num_moe_layers:
        # In the decode, generate() switches grouped_mm to batched_mm on a GPU whatever the batch
        # (generation/utils.py _optimize_model_for_decode; measured: Qwen1.5-MoE at 16 sequences x 4 experts,
        # more pairs than its 60 experts, gathered 704 + 352 MiB per layer): the experts run as batched matmuls
        # over weights gathered per selected expert (batched_mm_experts_forward: gate_up_proj[expert_ids] and
        # down_proj[expert_ids]): 3 x I x hidden per selected (token, expert) pair, in the weights' dtype.
        moe_gather = batch * moe.experts_per_token * 3 * moe.expert_intermediate_size * h * e
    decode_peak = weights_bytes + kv_final + growth + logits + moe_gather + workspace
    largest = _largest_tensor(spec, batch, prompt, precision.compute_dtype, attn, sliding_active)
    peak = max(prefill_peak, decode_peak)
    components = {
        **{f"prefill_{k}": v for k, v in transient.items()},
        "hidden_states": stream,
        "attention_mask": mask,
        "logits": logits,
        "cublas_workspace": workspace,
        "kv_prompt": kv_prompt,
        "kv_growth_copy": growth,
        "decode_moe_expert_gather": moe_gather,
    }
    return TransformersMemory(
        weights_bytes=weights_bytes,
        kv_cache_bytes=kv_final,
        prefill_peak_bytes=prefill_peak,
        decode_peak_bytes=decode_peak,
        peak_allocated_bytes=peak,
        activation_bytes=peak - weights_bytes - kv_final,
        largest_transient_bytes=largest,
        components=components,
    )
