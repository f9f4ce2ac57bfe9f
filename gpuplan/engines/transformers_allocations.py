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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from gpuplan.calc.allocator import SMALL_SIZE, AllocatorFit, Event, fit_sequence
from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import tensor_bytes
from gpuplan.calc.workload import Workload
from gpuplan.models.spec import ModelSpec, MoeSpec

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

    def alloc(self, size: int) -> int:
        self.next_id += 1
        if size > self.smallest:
            self.events.append(("a", self.next_id, max(size, 1)))
            self.kept.add(self.next_id)
        return self.next_id

    def free(self, *tensors: int) -> None:
        for tensor in tensors:
            if tensor in self.kept:
                self.kept.discard(tensor)
                self.events.append(("f", tensor, 0))


def weight_sizes(spec: ModelSpec, precision: Precision, weights_bytes: int) -> Iterator[tuple[int, int]]:
    """(bytes, count) of the parameter tensors as the model is built or loaded (one allocation per tensor),
    then what the estimate counts beyond them (buffers such as rotary ``inv_freq``)."""
    total = 0
    for group in spec.tensors:
        if not group.loaded:
            continue
        size = tensor_bytes(group.model_copy(update={"count": 1}), precision)
        total += size * group.count
        yield size, group.count
    if weights_bytes > total:
        yield weights_bytes - total, 1


def _rms_norm(trace: _Trace, rows: int, width: int, e: int) -> int:
    """LlamaRMSNorm.forward: hidden_states.to(float32); variance = pow(2).mean(-1); x * rsqrt(variance + eps);
    weight * x.to(input_dtype). Returns the normed tensor's id."""
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
    cast = trace.alloc(rows * width * e) if e != FP32 else None
    if cast is not None:
        trace.free(scaled)
    out = trace.alloc(rows * width * e)
    trace.free(cast if cast is not None else scaled)
    return out


def _rope(trace: _Trace, size: int) -> int:
    """apply_rotary_pos_emb for one of q / k: (x * cos) + (rotate_half(x) * sin), rotate_half = cat(-x2, x1)."""
    times_cos = trace.alloc(size)
    negated = trace.alloc(size // 2)
    rotated = trace.alloc(size)
    trace.free(negated)
    times_sin = trace.alloc(size)
    trace.free(rotated)
    out = trace.alloc(size)
    trace.free(times_cos, times_sin)
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
    indexer: tuple[int, int] = (0, 0)  # DeepSeek sparse attention's indexer: (heads, index_head_dim)


def _cache_update(trace: _Trace, s: _Shape, keys: int, cache: list[int], layer: int, first: bool) -> None:
    """DynamicLayer.update: keys = torch.cat([keys, key_states], dim=-2), then the same for values; the old
    tensors (empty before the prompt) are dropped as the names are rebound. A sliding-window layer
    (DynamicSlidingWindowLayer) keeps a view of the full prompt after the prefill and, from the first decode
    step on, a new tensor of its window (window - 1 kept tokens plus the new one)."""
    window = s.windows[layer]
    kept = keys if first or window is None else min(keys, window)
    new_k = trace.alloc(s.batch * kept * s.kv_heads * s.head_dim * s.kv)
    if window is not None:
        # DynamicSlidingWindowLayer.update forms both full tensors before it rebinds self.keys and
        # self.values to their last window - 1 positions.
        new_v = trace.alloc(s.batch * kept * s.kv_heads * s.v_head_dim * s.kv)
        if not first:
            trace.free(cache[2 * layer], cache[2 * layer + 1])
    else:
        if not first:
            trace.free(cache[2 * layer])
        new_v = trace.alloc(s.batch * kept * s.kv_heads * s.v_head_dim * s.kv)
        if not first:
            trace.free(cache[2 * layer + 1])
    cache[2 * layer], cache[2 * layer + 1] = new_k, new_v


def _attention(trace: _Trace, s: _Shape, normed: int, rows: int, queries: int, keys: int,
               cache: list[int], layer: int, first: bool) -> tuple[int, list[int]]:
    """Self-attention of one layer over ``rows`` = batch x queries token rows, with ``keys`` cached tokens after
    this step's update. ``cache`` holds this layer's K and V tensor ids (replaced as the cache grows)."""
    b, e = s.batch, s.e
    q = trace.alloc(rows * s.heads * s.head_dim * e)
    k = trace.alloc(rows * s.kv_heads * s.head_dim * e)
    v = trace.alloc(rows * s.kv_heads * s.v_head_dim * e)
    q_rot = _rope(trace, rows * s.heads * s.head_dim * e)
    k_rot = _rope(trace, rows * s.kv_heads * s.head_dim * e)
    trace.free(q, k)
    _cache_update(trace, s, keys, cache, layer, first)
    trace.free(k_rot, v)
    if s.indexer[0]:
        _indexer(trace, s, queries, keys)
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
        window = s.windows[layer]
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
    trace.free(out)
    projected = trace.alloc(rows * s.hidden * e)
    trace.free(contiguous, q_rot, normed)
    # Eager attention returns its probabilities, which the decoder layer keeps bound through its MLP
    # (``hidden_states, _ = self.self_attn(...)``).
    return projected, held


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
    selected expert (decode, when batch x experts_per_token <= experts); then the shared expert."""
    samples = rows * moe.experts_per_token
    width = moe.expert_intermediate_size
    router = trace.alloc(rows * moe.num_experts * FP32)
    if decode and samples <= moe.num_experts:
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


def _mlp(trace: _Trace, s: _Shape, normed: int, rows: int, decode: bool) -> int:
    if s.moe is not None:
        return _moe(trace, s, s.moe, normed, rows, decode)
    return _dense_mlp(trace, s, normed, rows, s.intermediate, free_input=True)


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
    if s.moe is not None:
        return False
    return rows * widest <= smallest


def _forward(trace: _Trace, s: _Shape, layers: int, queries: int, cached: int, cache: list[int],
             first: bool) -> int:
    """One model forward over ``queries`` new tokens per sequence; returns the fp32 next-token logits' id."""
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
        normed = _rms_norm(trace, rows, s.hidden, s.e)
        attended, held = _attention(trace, s, normed, rows, queries, keys, cache, layer, first)
        residual = trace.alloc(rows * s.hidden * s.e)
        trace.free(attended)
        normed = _rms_norm(trace, rows, s.hidden, s.e)
        mlp_out = _mlp(trace, s, normed, rows, decode=not first)
        out = trace.alloc(rows * s.hidden * s.e)
        trace.free(mlp_out, residual, *held)
        if hidden != embedding:
            trace.free(hidden)
        hidden = out
    final = _rms_norm(trace, rows, s.hidden, s.e)
    trace.free(hidden, cos, sin, embedding)
    if mask is not None:
        trace.free(mask)
    # logits_to_keep=1: lm_head on the last position only; generate() copies them to float32.
    logits = trace.alloc(s.batch * s.vocab * s.e)
    trace.free(final)
    logits32 = trace.alloc(s.batch * s.vocab * FP32)
    trace.free(logits)
    return logits32


def generate_events(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                    attn: str = "sdpa", *, smallest: int = 0, decode_steps: int | None = None) -> list[Event]:
    """Every allocation and free of a greedy generate() from a fresh process: the cuBLAS workspace, the
    weights, the prompt, the prefill and each decode step. ``smallest``: leave out requests of this size or
    less; ``decode_steps``: stop after that many decode steps (default: all)."""
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
               indexer=(spec.mla.index_heads, max((lc.indexer_dim for lc in spec.layer_caches), default=0))
               if spec.mla is not None else (0, 0))
    prompt = workload.prompt_tokens
    ids = trace.alloc(s.batch * prompt * INT64)
    mask = trace.alloc(s.batch * prompt * INT64)
    cache = [0] * (2 * spec.num_hidden_layers)
    logits = _forward(trace, s, spec.num_hidden_layers, prompt, 0, cache, first=True)
    cached = prompt
    steps = max(0, workload.new_tokens - 1)
    for _ in range(steps if decode_steps is None else min(steps, decode_steps)):
        # The next token is appended to the ids and the mask (torch.cat), the logits dropped.
        new_ids = trace.alloc(s.batch * (cached + 1) * INT64)
        trace.free(ids)
        new_mask = trace.alloc(s.batch * (cached + 1) * INT64)
        trace.free(mask, logits)
        ids, mask = new_ids, new_mask
        logits = _forward(trace, s, spec.num_hidden_layers, 1, cached, cache, first=False)
        cached += 1
    return trace.events


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
    small = [event for event in small_all if event[0] != "a" or event[2] <= SMALL_SIZE]
    kept = {tensor for action, tensor, _ in small if action == "a"}
    small = [event for event in small if event[1] in kept]
    return fit_sequence(large, small, expandable_segments=expandable_segments)
