"""The sequence of CUDA allocations and frees that Hugging Face ``generate()`` makes, for the allocator simulation.

``gpuplan/engines/transformers.py`` knows the tensors of generate() by their sizes and when they coexist; this
module writes the same tensors as an ordered sequence of ``malloc`` / ``free`` events, which
``gpuplan/calc/allocator.py`` replays through PyTorch's caching allocator to find the smallest GPU memory in
which the run completes. Order matters there: the blocks a freed tensor leaves behind are reused, split and
merged by later requests, and the cache that grows by ``torch.cat`` at every decode step is what fragments
the memory.

The order follows transformers 5.x (modeling_llama.py and the models generated from it; cache_utils.py
``DynamicLayer.update``; generation/utils.py ``_sample``) and torch 2.11's ATen kernels, one Python
statement at a time: a temporary dies when the statement that used it ends, a rebound name frees its old
tensor. Tensors of 1 MiB or less go to the allocator's separate small pool; they are written too, since
they are what fills the small pool's 2 MiB segments.

Each layer follows its own cache (``ModelSpec.layer_caches``, the layer classes of cache_utils.py): attention
layers grow their K/V, and a sparse-attention indexer its keys, by ``torch.cat``; sliding layers keep their
window; state layers (LinearAttentionLayer) create ``conv_states`` and ``recurrent_states`` once, at the
prefill, and update them in place with ``copy_``, so a decode step allocates only the temporaries of the
update (Mamba-2's selective_state_update, the gated DeltaNet's recurrent rule). What the sequence leaves
allocated as cache is what ``cache_bytes`` counts (tests/test_hybrid_allocations.py). DeepSeek's MLA
layers cache the latent and the rotary key, as transformers 5.25 does for DeepSeek-V3.2 too (5.17 cached
V3.2's per-head K/V: modeling_deepseek_v32.py of that release).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from gpuplan.calc.allocator import SMALL_SIZE, AllocatorFit, Event, fit_sequence
from gpuplan.calc.op_sequences import rotary_embedding
from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import tensor_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.transformers import GATED_DELTA_NET_CHUNK, compressed_elems
from gpuplan.models.spec import LayerCache, ModelSpec, MoeSpec, StateMixerSpec, TensorGroup, TensorRole

FP32 = 4
INT64 = 8
BOOL = 1


@dataclass
class _Trace:
    """Builds the event list; ``alloc`` returns a tensor id for ``free``. ``smallest``: requests of this size or
    less are left out (the small pool is replayed separately: its segments never serve large requests)."""

    smallest: int = 0
    events: list[Event] = field(default_factory=list)
    next_id: int = 0
    kept: set[int] = field(default_factory=set)
    labels: dict[int, str] = field(default_factory=dict)
    """What some tensors are (the cache's, by layer): for tests and for reading a sequence, not for the replay."""

    def alloc(self, size: int, label: str | None = None) -> int:
        self.next_id += 1
        if size > self.smallest:
            self.events.append(("a", self.next_id, max(size, 1)))
            self.kept.add(self.next_id)
            if label is not None:
                self.labels[self.next_id] = label
        return self.next_id

    def free(self, *tensors: int) -> None:
        for tensor in tensors:
            if tensor in self.kept:
                self.kept.discard(tensor)
                self.events.append(("f", tensor, 0))


def weight_sizes(spec: ModelSpec, precision: Precision, weights_bytes: int) -> Iterator[tuple[int, int]]:
    """(bytes, count) of the parameter tensors as the model is built or loaded (one allocation per tensor),
    then what the estimate counts beyond them (buffers such as rotary ``inv_freq``).

    Routed experts are not one tensor per expert: transformers 5 stores each MoE layer's experts as 3-D
    parameters, ``gate_up_proj`` [experts, 2 x intermediate, hidden] and ``down_proj`` [experts, hidden,
    intermediate] (modeling_qwen2_moe.py Qwen2MoeExperts, modeling_mixtral.py MixtralExperts, and 54 more
    families in transformers 5.17.0): a few large allocations per layer, not thousands of small ones that
    would each take a slice of a 20 MiB segment."""
    total = 0
    fused: dict[str, list[int]] = {}  # fused parameter -> [bytes per layer, layers]
    for group in spec.tensors:
        if not group.loaded:
            continue
        size = tensor_bytes(group.model_copy(update={"count": 1}), precision)
        total += size * group.count
        experts = _routed_experts(spec, group)
        if experts:
            name = "gate_up_proj" if group.name.rsplit(".", 2)[-2] in _GATE_AND_UP else group.name
            entry = fused.setdefault(name, [0, group.count // experts])
            entry[0] += size * experts
        else:
            yield size, group.count
    yield from ((per_layer, layers) for per_layer, layers in fused.values())
    if weights_bytes > total:
        yield weights_bytes - total, 1


# The two projections transformers 5 fuses into one expert parameter (checkpoint names: gate/up, w1/w3).
_GATE_AND_UP = frozenset({"gate_proj", "up_proj", "w1", "w3"})


def _routed_experts(spec: ModelSpec, group: TensorGroup) -> int:
    """The number of routed experts a weight group is stacked over in transformers 5, or 0 when it is not one."""
    if group.role is not TensorRole.EXPERT_LINEAR or spec.moe is None or spec.moe.num_experts <= 1:
        return 0
    experts = spec.moe.num_experts
    return experts if group.count % experts == 0 else 0


# Families whose RMSNorm scales in float32 and casts last (modeling_gemma2.py / modeling_gemma3.py
# Gemma2RMSNorm.forward: output = self._norm(x.float()); output = output * (1.0 + self.weight.float());
# return output.type_as(x)), where Llama's casts first and scales in the input's dtype.
GEMMA_NORM_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


def _normalized(trace: _Trace, rows: int, width: int, e: int) -> int:
    """What both RMSNorms share: x.to(float32), variance = pow(2).mean(-1), x * rsqrt(variance + eps); the
    upcast is freed once the scaled float32 tensor exists. Returns the scaled tensor's id."""
    upcast = trace.alloc(rows * width * FP32) if e != FP32 else None
    squared = trace.alloc(rows * width * FP32)
    variance = trace.alloc(rows * FP32)
    trace.free(squared)
    shifted = trace.alloc(rows * FP32)
    inverse = trace.alloc(rows * FP32)
    trace.free(shifted)
    scaled = trace.alloc(rows * width * FP32)
    trace.free(variance, inverse)
    if upcast is not None:
        trace.free(upcast)
    return scaled


def _gemma_rms_norm(trace: _Trace, rows: int, width: int, e: int) -> int:
    """Gemma2RMSNorm.forward: _norm(x.float()) (the upcast freed when _norm returns), the product with
    (1 + weight) in float32 (the scaled tensor freed as ``output`` is rebound), the cast last."""
    scaled = _normalized(trace, rows, width, e)
    product = trace.alloc(rows * width * FP32)
    trace.free(scaled)
    if e == FP32:
        return product
    out = trace.alloc(rows * width * e)
    trace.free(product)
    return out


def _rms_norm(trace: _Trace, rows: int, width: int, e: int, gemma: bool = False) -> int:
    if gemma:
        return _gemma_rms_norm(trace, rows, width, e)
    return _llama_rms_norm(trace, rows, width, e)


def _llama_rms_norm(trace: _Trace, rows: int, width: int, e: int) -> int:
    """LlamaRMSNorm.forward: the normalized float32 value, then weight * x.to(input_dtype). The scaled float32
    tensor is the local ``hidden_states`` until the function returns, so it is freed after the weight's product,
    not after the cast (the recorded allocator trace of Llama-3.1-8B's prefill: cast, product, free the cast,
    free the float32 tensor). Returns the normed tensor's id."""
    scaled = _normalized(trace, rows, width, e)
    cast = trace.alloc(rows * width * e) if e != FP32 else None
    out = trace.alloc(rows * width * e)
    if cast is not None:
        trace.free(cast)
    trace.free(scaled)
    return out


@dataclass(frozen=True)
class _Shape:
    batch: int
    e: int
    kv: int  # KV cache element bytes
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    intermediate: int
    vocab: int
    eager: bool
    bf16: bool
    windows: tuple[int | None, ...]
    moe: MoeSpec | None
    caches: tuple[_Layer, ...] = ()
    mixer: StateMixerSpec | None = None
    indexer: tuple[int, int] = (0, 0)  # DeepSeek sparse attention's indexer: (heads, index_head_dim)
    mla_expanded: tuple[int, int] | None = None  # MLA: elements per token of kv_b_proj's output and of the keys
    ffn_gated: bool = True
    gemma_norm: bool = False  # RMSNorm as Gemma 2 / 3 compute it (GEMMA_NORM_FAMILIES)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer as the sequence needs it: what it caches per sequence, in bytes, as
    gpuplan/engines/transformers.py ``layer_cache_bytes`` counts it, and which blocks it runs."""

    key: int = 0  # bytes per token of the keys tensor (DynamicLayer.keys)
    value: int = 0  # bytes per token of the values tensor
    indexer: int = 0  # bytes per token of a sparse-attention indexer's keys (DynamicIndexedLayer.indexer_keys)
    window: int | None = None
    conv: int = 0  # bytes of LinearAttentionLayer.conv_states
    recurrent: int = 0  # bytes of LinearAttentionLayer.recurrent_states
    conv_kernel: int = 0
    attends: bool = True  # runs self-attention
    state: bool = False  # runs a recurrent mixer (Mamba, gated DeltaNet, ...)
    ffn: bool = True  # runs an MLP / MoE block after the token mixer
    moe: bool = True  # its FFN is the MoE block (when the model has one)
    compressed: LayerCache | None = None  # DeepSeek-V4's compressed entries beside the window


# Families whose decoder layer is one norm and one block, a token mixer or an FFN (modeling_nemotron_h.py
# NemotronHBlock: "mamba", "attention", "mlp" or "moe" per layers_block_type).
_ONE_BLOCK_PER_LAYER = {"nemotron_h"}


def _layers(spec: ModelSpec, kv: int) -> tuple[_Layer, ...]:
    """Per decoder layer, its cache and blocks: from ``spec.layer_caches`` when the model has them, else
    every layer attention with the model's K/V heads (MLA: the latent and the rotary key, one head each)."""
    if not spec.layer_caches:
        if spec.mla is not None:
            key, value = spec.mla.kv_lora_rank * kv, spec.mla.qk_rope_head_dim * kv
        else:
            key = spec.num_key_value_heads * spec.head_dim * kv
            value = spec.num_key_value_heads * spec.v_head_dim * kv
        return tuple(_Layer(key=key, value=value, window=w) for w in spec.layer_windows)
    one_block = spec.model_type in _ONE_BLOCK_PER_LAYER
    return tuple(_layer(lc, kv, one_block) for lc in spec.layer_caches)


def _layer(lc: LayerCache, kv: int, one_block: bool) -> _Layer:
    attention = lc.kind in ("attention", "hybrid", "compressed")
    state = lc.kind in ("state", "hybrid")
    ffn_only = one_block and lc.kind == "none"
    return _Layer(
        key=lc.kv_heads * lc.key_dim * kv if attention else 0,
        value=lc.kv_heads * lc.value_dim * kv if attention else 0,
        indexer=lc.indexer_dim * kv if attention else 0,
        window=lc.window if attention else None,
        conv=lc.conv_elems * kv if state else 0,
        recurrent=lc.recurrent_elems * (lc.recurrent_bytes or kv) if state else 0,
        conv_kernel=lc.conv_kernel,
        # A "none" layer of a family with full decoder layers reuses another layer's K/V (Gemma 4's shared
        # layers): it attends without a cache of its own.
        attends=not state and not ffn_only or lc.kind == "hybrid",
        state=state,
        ffn=ffn_only or not one_block,
        moe=not one_block or lc.mixer == "moe",
        compressed=lc if lc.kind == "compressed" else None,
    )


def _mla_expanded(spec: ModelSpec) -> tuple[int, int] | None:
    """Elements per cached token of the two tensors MLA's expand_kv makes from the latent at every step:
    kv_b_proj's output (heads x (qk_nope + v)) and the keys (heads x (qk_nope + qk_rope))."""
    m = spec.mla
    if m is None:
        return None
    if any(lc.kv_heads > 1 for lc in spec.layer_caches if lc.kind == "attention"):
        # The release caches K/V expanded per head (gpuplan/engines/transformers_releases.py as_cached_by):
        # expand_kv ran on the new tokens before the update, written as their k and v.
        return None
    heads = spec.num_attention_heads
    return heads * (m.qk_nope_head_dim + m.v_head_dim), heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)


def _cache_update(trace: _Trace, s: _Shape, keys: int, cache: list[int], layer: int, first: bool) -> None:
    """DynamicLayer.update: keys = torch.cat([keys, key_states], dim=-2), then the same for values; the old
    tensors (empty before the prompt) are dropped as the names are rebound. A sliding-window layer
    (DynamicSlidingWindowLayer) keeps a view of the full prompt after the prefill and, from the first decode
    step on, a new tensor of its window (window - 1 kept tokens plus the new one). ``cache`` holds three ids per
    layer: its keys, values and indexer keys."""
    c = s.caches[layer]
    if not c.key and not c.value:
        return
    window = c.window
    kept = keys if first or window is None else min(keys, window)
    new_k = trace.alloc(s.batch * kept * c.key, f"layer {layer} keys")
    if window is not None:
        # DynamicSlidingWindowLayer.update forms both full tensors before it rebinds self.keys and
        # self.values to their last window - 1 positions.
        new_v = trace.alloc(s.batch * kept * c.value, f"layer {layer} values")
        if not first:
            trace.free(cache[3 * layer], cache[3 * layer + 1])
    else:
        if not first:
            trace.free(cache[3 * layer])
        new_v = trace.alloc(s.batch * kept * c.value, f"layer {layer} values")
        if not first:
            trace.free(cache[3 * layer + 1])
    cache[3 * layer], cache[3 * layer + 1] = new_k, new_v
    if c.compressed is not None:
        # DeepSeek-V4's compressed entries, the buffer of tokens awaiting compression and the overlap state,
        # in the bytes cache_bytes counts, written as one tensor replaced at each step (the order of
        # modeling_deepseek_v4.py's own updates is not written out here).
        size = s.batch * compressed_elems(c.compressed, keys, not first) * s.kv
        grown = trace.alloc(size, f"layer {layer} compressed")
        if not first:
            trace.free(cache[3 * layer + 2])
        cache[3 * layer + 2] = grown


def _indexer_update(trace: _Trace, s: _Shape, rows: int, keys: int, cache: list[int], layer: int,
                    first: bool) -> None:
    """The sparse-attention indexer's key cache (modeling_deepseek_v32.py DeepseekV32Indexer.forward:
    k = cat(k_rot, k_pass) of the new tokens, then DynamicIndexedLayer.update_indexer: indexer_keys =
    torch.cat([indexer_keys, k], dim=1), the old tensor dropped as the name is rebound)."""
    c = s.caches[layer]
    if not c.indexer:
        return
    new_keys = trace.alloc(rows * c.indexer)
    grown = trace.alloc(s.batch * keys * c.indexer, f"layer {layer} indexer keys")
    if not first:
        trace.free(cache[3 * layer + 2])
    trace.free(new_keys)
    cache[3 * layer + 2] = grown


def _attention(trace: _Trace, s: _Shape, normed: int, rows: int, queries: int, keys: int,
               cache: list[int], layer: int, first: bool, free_input: bool = True) -> tuple[int, list[int]]:
    """Self-attention of one layer over ``rows`` = batch x queries token rows, with ``keys`` cached tokens after
    this step's update. ``cache`` holds this layer's K and V tensor ids (replaced as the cache grows)."""
    b, e = s.batch, s.e
    c = s.caches[layer]
    q = trace.alloc(rows * s.heads * s.head_dim * e)
    if s.mla_expanded:
        # MLA (modeling_deepseek_v3.py DeepseekV3Attention.forward): kv_a_proj_with_mqa gives the latent and the
        # rotary key of the new tokens, which the cache keeps; rotary embedding on that one-head key only.
        k = trace.alloc(rows * (c.key + c.value) // s.kv * e)
        v = trace.alloc(0)
        k_rot = rotary_embedding(trace, rows * c.value // s.kv * e)
    else:
        k = trace.alloc(rows * s.kv_heads * s.head_dim * e)
        v = trace.alloc(rows * s.kv_heads * s.v_head_dim * e)
    q_rot = rotary_embedding(trace, rows * s.heads * s.head_dim * e)
    if not s.mla_expanded:
        k_rot = rotary_embedding(trace, rows * s.kv_heads * s.head_dim * e)
    trace.free(q, k)
    _cache_update(trace, s, keys, cache, layer, first)
    trace.free(k_rot, v)
    _indexer_update(trace, s, rows, keys, cache, layer, first)
    if c.indexer and s.indexer[0]:
        _indexer(trace, s, queries, keys)
    mla_expanded = []
    if s.mla_expanded:
        # query_states = torch.cat((q_pass, q_rot), dim=-1), then expand_kv, at every step over every cached
        # token: kv_b_proj(latent) [b, keys, heads x (nope + v)] (the values are a view of it) and the keys in a
        # new tensor [b, heads, keys, nope + rope].
        mla_expanded = [trace.alloc(rows * s.heads * s.head_dim * e)]
        mla_expanded += [trace.alloc(b * keys * width * e) for width in s.mla_expanded]
    if s.eager:
        scores = b * s.heads * queries * keys
        expanded = trace.alloc(b * keys * s.heads * (s.head_dim + s.v_head_dim) * e) \
            if s.kv_heads != s.heads else None
        raw = trace.alloc(scores * e)
        scaled = trace.alloc(scores * e)
        trace.free(raw)
        masked = trace.alloc(scores * e)
        trace.free(scaled)
        # softmax(dtype=float32) copies bf16 to float32 first; ATen fuses the upcast for float16
        # (aten/src/ATen/native/SoftMax.cpp, "half_to_float").
        upcast = trace.alloc(scores * FP32) if s.bf16 else None
        probs32 = trace.alloc(scores * FP32)
        if upcast is not None:
            trace.free(upcast)
        probs = trace.alloc(scores * e) if e != FP32 else probs32
        if probs is not probs32:
            trace.free(probs32)
        trace.free(masked)
        out = trace.alloc(rows * s.heads * s.v_head_dim * e)
        if expanded is not None:
            trace.free(expanded)
        held = [probs]
    else:
        window = s.caches[layer].window
        expanded = []
        if window is not None and window < keys and s.kv_heads != s.heads:
            # A sliding window shorter than the keys needs a mask; with a mask transformers expands K/V to
            # every head (repeat_kv) instead of passing enable_gqa (integrations/sdpa_attention.py).
            expanded = [trace.alloc(b * keys * s.heads * s.head_dim * e),
                        trace.alloc(b * keys * s.heads * s.v_head_dim * e)]
        out = trace.alloc(rows * s.heads * s.v_head_dim * e)
        logsumexp = trace.alloc(b * s.heads * queries * FP32)
        trace.free(logsumexp, *expanded)
        held = []
    contiguous = trace.alloc(rows * s.heads * s.v_head_dim * e)
    trace.free(out, *mla_expanded)
    projected = trace.alloc(rows * s.hidden * e)
    trace.free(contiguous, q_rot)
    if free_input:
        trace.free(normed)
    # Eager attention returns its probabilities, which the decoder layer keeps bound through its MLP
    # (``hidden_states, _ = self.self_attn(...)``).
    return projected, held


def _state_caches(trace: _Trace, s: _Shape, queries: int, cache: list[int], layer: int) -> None:
    """LinearAttentionLayer.lazy_initialization at the prefill: conv_states = torch.zeros(batch, channels,
    kernel) in the model's dtype (update_conv_state pads a prompt shorter than the kernel first, a
    temporary of the same shape); the recurrent state comes later, with the scan's result."""
    c = s.caches[layer]
    if c.conv:
        cache[3 * layer] = trace.alloc(s.batch * c.conv, f"layer {layer} conv state")
        if queries < c.conv_kernel:
            trace.free(trace.alloc(s.batch * c.conv))  # F.pad of the prompt to the kernel's width


def _keep_recurrent(trace: _Trace, s: _Shape, final: int, cache: list[int], layer: int) -> None:
    """update_recurrent_state at the prefill: recurrent_states = torch.zeros_like(final state), then copy_; the
    scan's own final state dies with the mixer's frame."""
    c = s.caches[layer]
    if c.recurrent:
        cache[3 * layer + 1] = trace.alloc(s.batch * c.recurrent, f"layer {layer} recurrent state")
    trace.free(final)


def _state_mixer(trace: _Trace, s: _Shape, normed: int, rows: int, queries: int, cache: list[int], layer: int,
                 first: bool) -> int:
    """A recurrent token mixer on the torch path. At the prefill its cache is created once
    (``_state_caches``, ``_keep_recurrent``); at a decode step it is updated in place (conv_state.copy_,
    recurrent_states.copy_: no cache tensor is allocated), but the update's temporaries are. Between them,
    the tensors gpuplan/engines/transformers.py ``_state_mixer_transient`` counts for the prefill."""
    c, m, e = s.caches[layer], s.mixer, s.e
    if m is None:  # a state layer gpuplan knows only by its cache (short convolutions, lightning attention)
        if first:
            _state_caches(trace, s, queries, cache, layer)
            _keep_recurrent(trace, s, trace.alloc(s.batch * c.recurrent), cache, layer)
        out = trace.alloc(rows * s.hidden * e)
        return out
    if m.kind == "mamba2":
        projected = trace.alloc(rows * m.in_proj * e)
        channels = m.conv_dim
    else:
        key, value = m.key_heads * m.key_dim, m.heads * m.value_dim
        projected = trace.alloc(rows * (2 * key + 2 * value) * e)  # in_proj_qkvz (in_proj_ba: a few columns)
        channels = 2 * key + value
    kernel = c.conv_kernel or 1
    if first:
        _state_caches(trace, s, queries, cache, layer)
        # causal_conv1d_fn: F.conv1d with kernel - 1 padding on both sides, then the activation of its slice.
        full = trace.alloc(s.batch * channels * (queries + kernel - 1) * e)
    else:
        # causal_conv1d_update: cat([conv_state, x], -1), conv_state.copy_(its last columns), F.conv1d.
        joined = trace.alloc(s.batch * channels * (kernel + 1) * e)
        full = trace.alloc(s.batch * channels * 2 * e)
        trace.free(joined)
    convolved = trace.alloc(rows * channels * e)
    trace.free(full)
    if first:
        scanned = _mamba2_scan(trace, s, m, rows, cache, layer) if m.kind == "mamba2" else \
            _delta_scan(trace, s, m, rows, cache, layer)
    elif m.kind == "mamba2":
        scanned = _mamba2_step(trace, s, m, rows, layer)
    else:
        scanned = _delta_step(trace, s, m, rows, layer)
    gated = trace.alloc(rows * m.heads * m.value_dim * e)  # the gated RMSNorm
    trace.free(scanned)
    out = trace.alloc(rows * s.hidden * e)  # out_proj
    trace.free(gated, convolved, projected, normed)
    return out


def _delta_scan(trace: _Trace, s: _Shape, m: StateMixerSpec, rows: int, cache: list[int], layer: int) -> int:
    """torch_chunk_gated_delta_rule (modeling_qwen3_next.py) after q and k are repeated to the value heads:
    float32 query, key, k_beta, decayed k_beta and k_cumdecay (key width), value, v_beta, new_values and the
    output (value width), three [chunk x chunk] matrices per chunk, over the sequence padded to the chunk."""
    chunk = GATED_DELTA_NET_CHUNK
    e, queries = s.e, rows // s.batch
    repeated = [trace.alloc(rows * m.heads * m.key_dim * e) for _ in range(2)] if m.heads != m.key_heads else []
    padded = s.batch * (-(-queries // chunk) * chunk)
    scan = [trace.alloc(padded * m.heads * m.key_dim * FP32) for _ in range(5)]
    scan += [trace.alloc(padded * m.heads * m.value_dim * FP32) for _ in range(4)]
    scan += [trace.alloc(padded * m.heads * chunk * FP32) for _ in range(3)]
    final = trace.alloc(s.batch * m.heads * m.key_dim * m.value_dim * FP32)
    out = trace.alloc(rows * m.heads * m.value_dim * e)  # .to(initial_dtype)
    trace.free(*scan, *repeated)
    _keep_recurrent(trace, s, final, cache, layer)
    return out


def _delta_step(trace: _Trace, s: _Shape, m: StateMixerSpec, rows: int, layer: int) -> int:
    """torch_recurrent_gated_delta_rule for one token: state * decay, (state * k).sum(-2), k x delta and their
    sum are float32 tensors of the state's shape; the result is copied into the cache (copy_) and dropped."""
    size = s.caches[layer].recurrent * s.batch
    decayed = trace.alloc(size)
    trace.free(trace.alloc(size))  # last_recurrent_state * k_t.unsqueeze(-1), summed away
    outer = trace.alloc(size)  # k_t.unsqueeze(-1) * delta.unsqueeze(-2)
    updated = trace.alloc(size)
    trace.free(outer, decayed)
    trace.free(trace.alloc(size))  # last_recurrent_state * q_t.unsqueeze(-1), summed away
    out = trace.alloc(rows * m.heads * m.value_dim * s.e)
    trace.free(updated)
    return out


def _mamba2_scan(trace: _Trace, s: _Shape, m: StateMixerSpec, rows: int, cache: list[int], layer: int) -> int:
    """mamba2_chunk_scan (modeling_nemotron_h.py and its copies), statement by statement, in float32 over the
    sequence padded to the chunk (P rows: b x c chunks x l): each broadcast product is a temporary as large as
    its operands' broadcast shape, reduced by the ``.sum`` that follows it. Returns the output; the final
    state (a view of the inter-chunk states) is copied into the cache."""
    h, d, n, chunk = m.heads, m.value_dim, m.state_size, m.chunk
    queries = rows // s.batch
    chunks = -(-queries // chunk)
    padded = s.batch * chunks * chunk
    x = trace.alloc(rows * h * d * FP32)  # hidden_states.float()
    b_rep, c_rep = (trace.alloc(rows * h * n * FP32) for _ in range(2))  # B, C .float().repeat_interleave
    d_residual = trace.alloc(padded * h * d * FP32)  # D[..., None] * pad_tensor_by_size(hidden_states)
    x_dt = trace.alloc(rows * h * d * FP32)  # hidden_states * dt
    trace.free(x)
    if padded != rows:  # reshape_into_chunks pads a copy of each of x, B and C
        chunked = [trace.alloc(padded * h * w * FP32) for w in (d, n, n)]
        trace.free(x_dt, b_rep, c_rep)
        x_dt, b_rep, c_rep = chunked
    decay = trace.alloc(padded * h * chunk * FP32)  # L = exp(segment_sum(A)): [b, h, c, l, l]
    products = ((n, 1), (1, 1))  # G = (C x B).sum(-1), M = (G x L).sum(-1): [b, c, l, l, h, *]
    reduced = []
    for width, kept in products:
        product = trace.alloc(padded * chunk * h * width * FP32)
        reduced.append(trace.alloc(padded * chunk * h * kept * FP32))
        trace.free(product)
    product = trace.alloc(padded * chunk * h * d * FP32)  # M[..., None] * x: [b, c, l, l, h, d]
    y_diag = trace.alloc(padded * h * d * FP32)
    trace.free(product)
    b_decay = trace.alloc(padded * h * n * FP32)
    product = trace.alloc(padded * h * d * n * FP32)  # B_decay x x: [b, c, l, h, d, n]
    states = trace.alloc(s.batch * chunks * h * d * n * FP32)
    trace.free(product)
    joined = trace.alloc(s.batch * (chunks + 1) * h * d * n * FP32)  # cat([previous_states, states])
    trace.free(states)
    product = trace.alloc(s.batch * (chunks + 1) ** 2 * h * d * n * FP32)  # decay_chunk x states
    new_states = trace.alloc(s.batch * (chunks + 1) * h * d * n * FP32)  # final_state is its last chunk
    trace.free(product, joined)
    product = trace.alloc(padded * h * d * n * FP32)  # C x states: [b, c, l, h, d, n]
    summed = trace.alloc(padded * h * d * FP32)
    trace.free(product)
    y_off = trace.alloc(padded * h * d * FP32)
    trace.free(summed)
    output = trace.alloc(padded * h * d * FP32)  # Y_diag + Y_off
    with_d = trace.alloc(padded * h * d * FP32)  # + D_residual
    trace.free(output, y_off, y_diag, b_decay, *reduced, decay, x_dt, b_rep, c_rep, d_residual)
    _keep_recurrent(trace, s, new_states, cache, layer)
    return with_d


def _mamba2_step(trace: _Trace, s: _Shape, m: StateMixerSpec, rows: int, layer: int) -> int:
    """mamba2_selective_state_update for one token (modeling_nemotron_h.py): dA = exp(dt.float() * A) in
    float32, dB = dt * B and dB * x in the model's dtype, state * dA + dBx in float32 (copied into the cache),
    then that state cast to the model's dtype for the output's bmm; all of the state's shape."""
    elems = s.batch * m.heads * m.value_dim * m.state_size
    product = trace.alloc(elems * FP32)
    decay = trace.alloc(elems * FP32)
    trace.free(product)
    step_b = trace.alloc(elems * s.e)
    step_bx = trace.alloc(elems * s.e)
    scaled = trace.alloc(elems * FP32)
    updated = trace.alloc(elems * FP32)
    trace.free(scaled)
    cast = trace.alloc(elems * s.e)
    trace.free(updated)
    out = trace.alloc(rows * m.heads * m.value_dim * s.e)
    trace.free(decay, step_b, step_bx, cast)
    return out


def _indexer(trace: _Trace, s: _Shape, queries: int, keys: int) -> None:
    """DeepSeek sparse attention's indexer scores (gpuplan/engines/transformers.py _indexer_transient): float32
    q and k, the keys torch.matmul copies per query when the batch has several sequences, the scores, then the
    scaled scores and their relu, one statement each; the [b, q, t] index scores and top-k are small."""
    b, (heads, dim) = s.batch, s.indexer
    q32 = trace.alloc(b * queries * heads * dim * FP32)
    k32 = trace.alloc(b * keys * dim * FP32)
    copy = trace.alloc(b * queries * dim * keys * FP32) if b > 1 else None
    raw = trace.alloc(b * queries * heads * keys * FP32)
    trace.free(*([copy] if copy is not None else []), q32, k32)
    scaled = trace.alloc(b * queries * heads * keys * FP32)
    trace.free(raw)
    relu = trace.alloc(b * queries * heads * keys * FP32)
    trace.free(scaled)
    index_scores = trace.alloc(b * queries * keys * FP32)
    trace.free(relu, index_scores)


def _moe(trace: _Trace, s: _Shape, moe: MoeSpec, normed: int, rows: int, decode: bool) -> int:
    """A sparse MoE block as gpuplan/engines/transformers.py counts it: grouped_mm_experts_forward over the
    token rows gathered in expert order (prefill), or batched_mm_experts_forward over the weights gathered per
    selected expert (decode: generate() switches grouped_mm to batched_mm on a GPU for the whole decode,
    generation/utils.py ``_optimize_model_for_decode``, whatever the batch); then the shared expert."""
    samples = rows * moe.experts_per_token
    width = moe.expert_intermediate_size
    router = trace.alloc(rows * moe.num_experts * FP32)
    if decode:
        gathered = trace.alloc(samples * 2 * width * s.hidden * s.e)
        down_w = trace.alloc(samples * width * s.hidden * s.e)
        gate_up = trace.alloc(samples * 2 * width * s.e)
        trace.free(gathered)
        activated = trace.alloc(samples * width * s.e)
        trace.free(gate_up)
        expert_out = trace.alloc(samples * s.hidden * s.e)
        trace.free(activated, down_w)
    else:
        gathered = trace.alloc(samples * s.hidden * s.e)
        gate_up = trace.alloc(samples * 2 * width * s.e)
        activated = trace.alloc(samples * width * s.e)
        trace.free(gate_up)
        down = trace.alloc(samples * s.hidden * s.e)
        trace.free(activated)
        weighted = trace.alloc(samples * s.hidden * s.e)
        expert_out = trace.alloc(samples * s.hidden * s.e)
        trace.free(gathered, down, weighted)
    routed = trace.alloc(rows * s.hidden * s.e)
    trace.free(expert_out, router)
    if moe.shared_expert_intermediate_size:
        shared = _dense_mlp(trace, s, normed, rows, moe.shared_expert_intermediate_size, free_input=False)
        out = trace.alloc(rows * s.hidden * s.e)
        trace.free(shared, routed)
        routed = out
    trace.free(normed)
    return routed


def _mlp(trace: _Trace, s: _Shape, normed: int, rows: int, decode: bool, moe: bool = True) -> int:
    if s.moe is not None and moe:
        return _moe(trace, s, s.moe, normed, rows, decode)
    if not s.ffn_gated:
        return _plain_mlp(trace, s, normed, rows)
    return _dense_mlp(trace, s, normed, rows, s.intermediate, free_input=True)


def _plain_mlp(trace: _Trace, s: _Shape, normed: int, rows: int) -> int:
    """down_proj(act_fn(up_proj(x))) (modeling_nemotron_h.py NemotronHMLP, relu2)."""
    up = trace.alloc(rows * s.intermediate * s.e)
    activated = trace.alloc(rows * s.intermediate * s.e)
    trace.free(up)
    down = trace.alloc(rows * s.hidden * s.e)
    trace.free(activated, normed)
    return down


def _dense_mlp(trace: _Trace, s: _Shape, normed: int, rows: int, width: int, free_input: bool) -> int:
    """down_proj(act_fn(gate_proj(x)) * up_proj(x)) (modeling_llama.py LlamaMLP)."""
    gate = trace.alloc(rows * width * s.e)
    activated = trace.alloc(rows * width * s.e)
    trace.free(gate)
    up = trace.alloc(rows * width * s.e)
    product = trace.alloc(rows * width * s.e)
    trace.free(activated, up)
    down = trace.alloc(rows * s.hidden * s.e)
    trace.free(product)
    if free_input:
        trace.free(normed)
    return down


def _decode_is_small(s: _Shape, keys: int, smallest: int) -> bool:
    """Whether every tensor of a decode step's layers but the cache's is left out of the trace (one token row
    per sequence: the widest is an fp32 norm upcast, the MLP, the eager scores or an MoE gather)."""
    widest = max(s.hidden * FP32, s.intermediate * s.e, s.heads * max(s.head_dim, s.v_head_dim) * s.e)
    if s.eager:
        widest = max(widest, s.heads * keys * FP32)
    rows = s.batch
    if s.moe is not None or any(c.state for c in s.caches) or any(c.indexer for c in s.caches):
        return False
    return rows * widest <= smallest


def _layer_forward(trace: _Trace, s: _Shape, hidden: int, rows: int, queries: int, keys: int, cache: list[int],
                   layer: int, first: bool) -> int:
    """One decoder layer: its token mixer (attention, a recurrent mixer, or both side by side) and its FFN,
    each behind a norm and added to the residual stream; returns the layer's output."""
    c = s.caches[layer]
    residual, held = hidden, []
    if c.attends or c.state:
        normed = _rms_norm(trace, rows, s.hidden, s.e, s.gemma_norm)
        mixed = []
        if c.attends:
            attended, held = _attention(trace, s, normed, rows, queries, keys, cache, layer, first,
                                        free_input=not c.state)
            mixed.append(attended)
        if c.state:
            mixed.append(_state_mixer(trace, s, normed, rows, queries, cache, layer, first))
        if len(mixed) == 2:  # attention and Mamba run side by side and are summed (modeling_falcon_h1.py)
            summed = trace.alloc(rows * s.hidden * s.e)
            trace.free(*mixed)
            mixed = [summed]
        residual = trace.alloc(rows * s.hidden * s.e)
        trace.free(*mixed)
    if not c.ffn:
        trace.free(*held)
        return residual
    normed = _rms_norm(trace, rows, s.hidden, s.e, s.gemma_norm)
    mlp_out = _mlp(trace, s, normed, rows, decode=not first, moe=c.moe)
    out = trace.alloc(rows * s.hidden * s.e)
    trace.free(mlp_out, residual, *held)
    return out


def _forward(trace: _Trace, s: _Shape, layers: int, queries: int, cached: int, cache: list[int],
             first: bool) -> int:
    """One model forward over ``queries`` new tokens per sequence; returns the id of its logits (the last
    position's, in the model's dtype)."""
    rows = s.batch * queries
    keys = cached + queries
    hidden = trace.alloc(rows * s.hidden * s.e)  # embed_tokens
    embedding = hidden
    # LlamaRotaryEmbedding: freqs [b, q, d/2] and emb = cat(freqs, freqs) in fp32, cos and sin in the dtype.
    freqs = trace.alloc(rows * s.head_dim // 2 * FP32)
    emb = trace.alloc(rows * s.head_dim * FP32)
    trace.free(freqs)
    cos32 = trace.alloc(rows * s.head_dim * FP32)
    sin32 = trace.alloc(rows * s.head_dim * FP32)
    trace.free(emb)
    cos = trace.alloc(rows * s.head_dim * s.e)
    sin = trace.alloc(rows * s.head_dim * s.e)
    trace.free(cos32, sin32)
    if s.eager:
        mask: int | None = trace.alloc(s.batch * queries * keys * s.e)  # masking_utils.py eager_mask
    elif any(w is not None and w < keys for w in s.windows):
        mask = trace.alloc(s.batch * queries * keys * BOOL)  # masking_utils.py sliding_window_mask
    else:
        mask = None
    if not first and _decode_is_small(s, keys, trace.smallest):
        # Every tensor of the layers but the cache is left out: only the cache's growth is replayed.
        for layer in range(layers):
            _cache_update(trace, s, keys, cache, layer, first)
        layers = 0
    for layer in range(layers):
        out = _layer_forward(trace, s, hidden, rows, queries, keys, cache, layer, first)
        if hidden != embedding:
            trace.free(hidden)
        hidden = out
    final = _rms_norm(trace, rows, s.hidden, s.e, s.gemma_norm)
    trace.free(hidden, cos, sin, embedding)
    if mask is not None:
        trace.free(mask)
    # logits_to_keep=1: lm_head on the last position only (the model output's ``logits``).
    logits = trace.alloc(s.batch * s.vocab * s.e)
    trace.free(final)
    return logits


def generate_events(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                    attn: str = "sdpa", *, smallest: int = 0, decode_steps: int | None = None) -> list[Event]:
    """Every allocation and free of a greedy generate() from a fresh process: the cuBLAS workspace, the
    weights, the prompt, the prefill and each decode step. ``smallest``: leave out requests of this size or
    less; ``decode_steps``: stop after that many decode steps (default: all)."""
    return generate_trace(spec, workload, precision, weights_bytes, attn, smallest=smallest,
                          decode_steps=decode_steps).events


def generate_trace(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                   attn: str = "sdpa", *, smallest: int = 0, decode_steps: int | None = None) -> _Trace:
    """:func:`generate_events` with the labels of the cache's tensors (``_Trace.labels``)."""
    trace = _Trace(smallest=smallest)
    trace.alloc(CUBLAS_WORKSPACE_BYTES)
    for size, count in weight_sizes(spec, precision, weights_bytes):
        if size > trace.smallest:
            trace.events.append(("w", count, size))
    s = _Shape(batch=workload.batch, e=precision.compute_bytes, kv=precision.kv_bytes, hidden=spec.hidden_size,
               heads=spec.num_attention_heads, kv_heads=spec.num_key_value_heads, head_dim=spec.head_dim,
               v_head_dim=spec.v_head_dim, intermediate=spec.intermediate_size, vocab=spec.vocab_size,
               eager=attn == "eager", bf16=precision.compute_dtype == "bf16", windows=spec.layer_windows,
               moe=spec.moe if spec.moe is not None and spec.moe.num_moe_layers else None,
               caches=_layers(spec, precision.kv_bytes), mixer=spec.state_mixer, ffn_gated=spec.ffn_gated,
               mla_expanded=_mla_expanded(spec), gemma_norm=spec.model_type in GEMMA_NORM_FAMILIES,
               indexer=(spec.mla.index_heads, max((lc.indexer_dim for lc in spec.layer_caches), default=0))
               if spec.mla is not None else (0, 0))
    prompt = workload.prompt_tokens
    ids = trace.alloc(s.batch * prompt * INT64)
    mask = trace.alloc(s.batch * prompt * INT64)
    cache = [0] * (3 * spec.num_hidden_layers)
    scores: int | None = None
    steps = max(0, workload.new_tokens - 1)
    forwards = 1 + (steps if decode_steps is None else min(steps, decode_steps))
    for forward in range(forwards):
        # generation/utils.py _sample (transformers 5.17), one iteration: the forward (the prefill first), then
        # _update_model_kwargs_for_generation appends to the attention mask (torch.cat), next_token_logits
        # = outputs.logits[:, -1].to(copy=True, dtype=float32) replaces the previous step's copy, which stayed
        # bound through this forward, input_ids = torch.cat([input_ids, next_tokens]), and ``del outputs``
        # drops the model's logits.
        cached = prompt + forward - 1 if forward else 0
        logits = _forward(trace, s, spec.num_hidden_layers, 1 if forward else prompt, cached, cache,
                          first=forward == 0)
        length = prompt + forward + 1
        new_mask = trace.alloc(s.batch * length * INT64)
        trace.free(mask)
        new_scores = trace.alloc(s.batch * s.vocab * FP32)
        if scores is not None:
            trace.free(scores)
        new_ids = trace.alloc(s.batch * length * INT64)
        trace.free(ids)
        trace.free(logits)
        ids, mask, scores = new_ids, new_mask, new_scores
    return trace


# Simulations already run, by model object and workload: a model is usually estimated many times (a sweep, a
# plan, the library in a loop), and hashing a whole ModelSpec for each lookup would cost more than the estimate.
# Each entry keeps its spec alive, so the id in its key cannot be reused by another object while it is cached.
_FITS: dict[tuple, tuple[ModelSpec, AllocatorFit]] = {}
_FITS_KEPT = 512


def allocator_fit(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                  attn: str = "sdpa", expandable_segments: bool = False) -> AllocatorFit:
    """generate()'s sequence through the caching-allocator simulation (gpuplan/calc/allocator.py), cached."""
    key = (id(spec), workload.batch, workload.seq, workload.new_tokens, precision, weights_bytes, attn,
           expandable_segments)
    hit = _FITS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    fit = _simulate(spec, workload, precision, weights_bytes, attn, expandable_segments)
    if len(_FITS) >= _FITS_KEPT:
        _FITS.pop(next(iter(_FITS)))  # the oldest entry
    _FITS[key] = (spec, fit)
    return fit


def _simulate(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int, attn: str,
              expandable_segments: bool) -> AllocatorFit:
    """The small pool is replayed over the prefill and the first decode step: later steps allocate the same
    small tensors."""
    large = generate_events(spec, workload, precision, weights_bytes, attn, smallest=SMALL_SIZE)
    small_all = generate_events(spec, workload, precision, weights_bytes, attn, decode_steps=1)
    # The weights ("w": a count, not a tensor id) are all large: they belong to the large pool's replay only.
    small = [event for event in small_all if event[0] == "a" and event[2] <= SMALL_SIZE or event[0] == "f"]
    kept = {tensor for action, tensor, _ in small if action == "a"}
    small = [event for event in small if event[1] in kept]
    return fit_sequence(large, small, expandable_segments=expandable_segments)
