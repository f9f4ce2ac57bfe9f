"""How vLLM sizes its KV cache at startup, per GPU.

What changes between releases (the budget rule, defaults, profile run, KV layout and report) is read from
``gpuplan.engines.vllm_releases``; the description below is the V1 snapshot rule of 0.9.1-0.19.

vLLM (the V1 engine; the V0 worker's "Memory profiling" lines in 2024-2025 logs show the same rule) loads
the weights, runs one dummy forward pass at ``max_num_batched_tokens`` tokens plus one dummy sampler pass, and
gives the KV cache what is left of ``total x gpu_memory_utilization``::

    requested   = total_gpu_memory x gpu_memory_utilization
    available   = requested - (weights + activation_peak + non_torch)      # or --kv-cache-memory
    num_blocks  = available // (page_size x layers_per_group)
    tokens      = num_blocks // num_groups x block_size

Sources, vllm-project/vllm (the stored copies read: gpu_worker.py at 35d5cda, mem_utils.py at a6d5c39,
kv_cache_utils.py and kv_cache_interface.py at 001cabc, topk_topp_sampler.py at 3babc05):

* ``vllm/v1/worker/gpu_worker.py`` ``Worker.init_device``: ``requested_memory = total_memory x
  gpu_memory_utilization`` (torch.cuda.mem_get_info's total; the CUDA context and NCCL buffers created
  before the snapshot lie outside it); ``determine_available_memory``: ``available = requested_memory -
  non_kv_cache_memory``, or ``kv_cache_memory_bytes`` as given, skipping the subtraction.
* ``vllm/utils/mem_utils.py`` ``memory_profiling``: ``non_kv_cache_memory = weights_memory +
  torch_peak_increase + non_torch_increase``. ``weights_memory`` is the torch allocation made while loading
  (weights plus buffers such as the rotary cos/sin cache), counted in the caching allocator's blocks
  (``weight_blocks``); ``torch_peak_increase`` is the peak of
  ``allocated_bytes.all.peak`` during ``profile_run``; ``non_torch_increase`` is memory outside torch's
  allocator that appeared since the snapshot (cuBLAS workspaces, kernels loaded on first use, NCCL buffers
  allocated lazily).
* ``vllm/v1/kv_cache_interface.py`` ``FullAttentionSpec.real_page_size_bytes = block_size x num_kv_heads x
  (head_size + head_size_v) x dtype_size``; ``MLAAttentionSpec``: ``block_size x 1 x (kv_lora_rank +
  qk_rope_head_dim) x dtype_size``; ``SlidingWindowSpec.max_memory_usage_bytes = (cdiv(min(window - 1 +
  max_num_batched_tokens, max_model_len), block_size) + 1) x page_size``.
* ``vllm/v1/core/kv_cache_utils.py``: a model whose layers share one spec is one group
  (``get_num_blocks``: ``available // page_size // num_layers``); a hybrid model (sliding + full layers) is
  split into groups of ``group_size`` layers (the smallest type count, or the largest when it is under 1.5x
  the smallest; ``_get_kv_cache_groups_uniform_page_size``) and every group takes ``num_blocks`` blocks from
  shared tensors; ``_report_kv_cache_config`` logs ``num_blocks // len(groups) x block_size`` tokens and
  ``get_max_concurrency_for_kv_cache_config`` ``num_blocks / blocks one max_model_len request needs``;
  ``_check_enough_kv_cache_memory`` refuses to start when one max_model_len request does not fit and
  estimates the largest length that does by binary search.
* ``vllm/engine/arg_utils.py`` ``EngineArgs.get_batch_defaults``: on GPUs with >= 70 GiB that are not
  A100s, ``max_num_batched_tokens`` defaults to 8192 (API server) / 16384 (LLM class) and ``max_num_seqs``
  to 1024; elsewhere 2048 / 8192 and 256. V0 without chunked prefill used ``max(max_model_len, 2048)``
  tokens and 256 sequences (vllm/config.py SchedulerConfig).
* ``gpu_memory_utilization`` 0.9 and ``block_size`` 16 are vLLM's CacheConfig defaults.

The activation peak is not configured anywhere; it is what ``profile_run`` allocates. See
:func:`profile_activation` for the effects modelled and docs/serving.md for the check against the logs of
tests/fixtures/serving_logs.yaml.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.calc.precision import DTYPE_BYTES, Precision, engine_kv_dtype
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import (
    EngineOptions,
    Hardware,
    PrecisionRequest,
    auto_tokens_validator,
    largest_fitting,
    refuse_unmodelled_caches,
    size_validator,
    tokens_validator,
)
from gpuplan.engines.memo import per_spec
from gpuplan.engines.tp import ParallelLayout, padded_vocab, parallel_layout, pp_layer_split
from gpuplan.engines.vllm_cudagraphs import captured_graph_bytes, graph_estimate, profiled_graphs, utilization_line
from gpuplan.engines.vllm_releases import (
    TENSOR_PARALLEL_NON_TORCH_BYTES,
    Engine,
    FlashInferCall,
    GiB,
    ProfileLogits,
    SamplerKind,
    VllmRelease,
    charge,
    flashinfer_supports,
    is_cuda_platform,
    kv_cache_memory_suggestions,
    parse_release,
    profile_sampler,
    vllm_release,
)
from gpuplan.engines.vllm_releases import default_batch_limits as release_batch_limits
from gpuplan.engines.vllm_v0_reserved import profile_reservation, profile_shape
from gpuplan.engines.weight_blocks import weight_blocks
from gpuplan.errors import InputError
from gpuplan.models.spec import LayerCache, ModelSpec
from gpuplan.results import EngineEstimate, ServingBudget

__all__ = ["GiB", "TENSOR_PARALLEL_NON_TORCH_BYTES", "VllmBudget", "default_batch_limits", "kv_page_size",
           "profile_activation", "vllm_budget", "HybridPages", "STATE_GROUP", "hybrid_state_pages", "state_dtypes",
           "StateDtypes", "MambaDtype"]

DEFAULT_BLOCK_SIZE = 16
"""CacheConfig.DEFAULT_BLOCK_SIZE up to 0.33 (64 from 0.34.0; each release's own is VllmRelease.block_size)."""
# vllm/model_executor/layers/fused_moe/fused_moe.py fused_experts_impl: M = min(num_tokens, CHUNK_SIZE),
# VLLM_FUSED_MOE_CHUNK_SIZE defaults to 32768 (vllm/envs.py).
FUSED_MOE_CHUNK = 32768
FP32 = 4
# v1/sample/ops/topk_topp_sampler.py (0.7.0 to 0.34.0): logged once when TopKTopPSampler takes FlashInfer.
FLASHINFER_SAMPLER_LINE = "Using FlashInfer for top-p & top-k sampling."

UsageContext = Literal["openai", "llm"]
MambaDtype = Literal["auto", "float32", "float16", "bfloat16"]
"""vllm/config/cache.py (0.34.0) MambaDType: --mamba-cache-dtype and --mamba-ssm-cache-dtype."""


class KvGroup(BaseModel):
    """One KV cache group: layers sharing a block table."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    window: int | None
    """None for full attention, else the sliding window in tokens."""
    layers: int
    """Layers of the group on the most constrained GPU (padding layers not counted)."""


class VllmBudget(BaseModel):
    """vLLM's startup memory budget on the most constrained GPU. All sizes in bytes."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    engine_version: str
    """The vLLM release modelled (gpuplan.engines.vllm_releases)."""
    release_era: str
    """The releases that share this release's rules."""
    budget_rule: str
    engine: Engine
    tp: int
    pp: int
    total_gpu_memory: int
    gpu_memory_utilization: float
    requested: int
    weights: int
    activation_peak: int
    """The profile run's charge: its allocated peak, max(forward, sampler); under vLLM 0.3.1-0.6.3 (V0) what the
    caching allocator has reserved by its end (gpuplan.engines.vllm_v0_reserved)."""
    activation_forward: int
    activation_sampler: int
    sampler: SamplerKind | None = None
    """The sampler of the profile run's dummy sampler pass (``sort``, ``in_place``, ``flashinfer``); None where
    the profile run samples nothing (V1 0.7.x)."""
    non_torch: int
    cuda_graph: int | None = None
    """The CUDA graph memory charged before the KV cache (0.20+: the profiler's estimate); None where the
    release captures graphs after sizing the KV cache, outside this budget."""
    available_kv: int
    kv_cache_memory_given: bool
    block_size: int
    kv_dtype: str
    kv_bytes_per_element: int
    page_size_per_layer: int
    groups: tuple[KvGroup, ...]
    group_size: int
    num_blocks: int
    kv_cache_tokens: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    blocks_per_request: int
    max_concurrency: float
    fits_one_request: bool
    max_model_len_that_fits: int
    max_model_len_auto: int | None = None
    """What ``--max-model-len auto`` / ``-1`` picks (releases from 0.14.0): the model's context, or the longest
    that fits when that is shorter; None before 0.14.0."""
    kv_cache_memory_to_pin: int | None = None
    """``--kv-cache-memory`` bytes that give this pool without profiling (the blocks times their bytes;
    releases from 0.10.2, V1); None where the release has no such flag."""
    kv_cache_memory_suggested: tuple[int, int] | None = None
    """vLLM's own suggestions after CUDA graph capture (to fit the requested memory, to fill the GPU), releases
    from 0.10.2."""
    log_lines: tuple[str, ...]

    @property
    def kv_bytes_per_token(self) -> int:
        """Pool bytes one token of one request takes in every group (page / block_size x layers)."""
        return self.page_size_per_layer // self.block_size * self.group_size * len(self.groups)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def default_batch_limits(total_gpu_memory: int, gpu_name: str | None = None, *, engine: Engine = "v1",
                         usage_context: UsageContext = "openai", max_model_len: int = 2048,
                         engine_version: str = "0.19.0", sliding_window: bool = False) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM ``engine_version`` picks when neither is given."""
    return release_batch_limits(vllm_release(engine_version), engine, total_gpu_memory, gpu_name, usage_context,
                                max_model_len, sliding_window)


def kv_page_size(spec: ModelSpec, kv_heads_per_rank: int, kv_bytes: int,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Bytes of one block of one layer (vllm/v1/kv_cache_interface.py page_size_bytes)."""
    if spec.mla is not None:
        return block_size * spec.mla.latent_dim * kv_bytes
    return block_size * kv_heads_per_rank * (spec.head_dim + spec.v_head_dim) * kv_bytes


@per_spec
def _kv_groups(spec: ModelSpec, hybrid: bool) -> tuple[tuple[tuple[int, ...], ...], tuple[int | None, ...]]:
    """vLLM's KV cache groups as tuples of global layer indices (ascending), and each group's window."""
    by_type: dict[int | None, list[int]] = {}
    for i, window in enumerate(spec.layer_windows):
        key = window if hybrid and spec.mla is None else None
        by_type.setdefault(key, []).append(i)
    if len(by_type) == 1:
        ((window, layers),) = by_type.items()
        return (tuple(layers),), (window,)
    counts = [len(v) for v in by_type.values()]
    group_size = min(counts)
    if max(counts) < min(counts) * 1.5:
        group_size = max(counts)
    groups: list[tuple[int, ...]] = []
    windows: list[int | None] = []
    # Full attention first, as vLLM lists the full-attention group first for the models seen here.
    for window in sorted(by_type, key=lambda w: (w is not None, w or 0)):
        layers = by_type[window]
        n = _cdiv(len(layers), group_size)
        for i in range(n):
            groups.append(tuple(layers[i::n]))
            windows.append(window)
    return tuple(groups), tuple(windows)


@per_spec
def _has_sliding_window(spec: ModelSpec) -> bool:
    return any(w is not None for w in spec.layer_windows)


def _sampler_bytes_per_logit(e: int, sampler: SamplerKind, flashinfer_call: FlashInferCall = "from_logits") -> int:
    """Bytes alive per (request, vocab entry) at the sampler's peak.

    ``_dummy_sampler_run`` (vllm/v1/worker/gpu_model_runner.py) computes logits in the model dtype
    (``compute_logits``), then ``Sampler`` copies them to fp32; ``TopKTopPSampler.forward_native`` ends in
    ``logits.softmax(dtype=float32)`` and ``random_sample``'s ``torch.empty_like(probs).exponential_()``.
    With ``sort`` (``apply_top_k_top_p``, vllm/v1/sample/ops/topk_topp_sampler.py) the sorted fp32 values,
    int64 indices, two bool masks, the fp32 softmax of the sorted logits and the fp32 scatter result are alive
    at once; ``in_place`` is the Triton top-k/top-p kernel (vllm/v1/sample/ops/topk_topp_triton.py) that
    masks the logits in place and leaves only the softmax and the exponential draw.

    ``flashinfer`` (``TopKTopPSampler.forward_cuda``, ``flashinfer_sample``): the dummy pass sets both top-k
    (vocab - 1) and top-p (0.9) and no generators, so from 0.9.0 vLLM calls flashinfer's
    ``top_k_top_p_sampling_from_logits``, whose default ``top_k_first`` order keeps ``top_k_mask_logits``' new
    fp32 tensor alive while it softmaxes it into another (flashinfer/sampling.py in flashinfer-python 0.2.11,
    0.3.1 and 0.6.8.post1, the releases vLLM 0.10.1, 0.11.0 and 0.20.0 pin); the rejection sampling kernel
    allocates per request only. In 0.7.0-0.8.x vLLM softmaxes to fp32 itself and samples from the
    probabilities (``top_k_top_p_sampling_from_probs``, flashinfer-python 0.2.2.post1): the softmax alone.
    """
    fp32_copy = FP32 if e < FP32 else 0
    if sampler == "sort":
        return e + fp32_copy + FP32 + 8 + 1 + FP32 + 1 + FP32
    if sampler == "flashinfer" and flashinfer_call == "from_probs":
        return e + fp32_copy + FP32
    return e + fp32_copy + FP32 + FP32


def profile_activation(spec: ModelSpec, layout: ParallelLayout, e: int, tokens: int, seqs: int, *,
                       last_stage: bool = True, sampler: SamplerKind | None = "in_place",
                       logits: ProfileLogits = "sampler", flashinfer_call: FlashInferCall = "from_logits"
                       ) -> tuple[int, int]:
    """(forward peak, sampler peak) in bytes of vLLM's profile run on one GPU.

    Forward (``_dummy_run(max_num_batched_tokens)``; attention kernels are skipped in the profile run, so no
    score matrix): three [T, hidden] tensors stay alive through a decoder layer (the layer input held by the
    model's loop, the residual and the normed hidden state, which fused_add_rms_norm updates in place), plus
    the largest sub-block transient: the MLP's gate_up output [T, 2I/tp] and SiluAndMul output [T, I/tp]
    (vllm/model_executor/models/llama.py LlamaMLP), or fused MoE's ``cache13`` [M, topk, max(2I/tp, h)] and
    ``intermediate_cache2`` [M*topk, I/tp] (fused_moe.py fused_experts_impl), or attention's qkv output and
    output buffer.

    Sampler (last pipeline stage): the full hidden states [T, h] stay alive in ``profile_run`` while
    ``_dummy_sampler_run`` handles ``min(max_num_seqs, T)`` rows: their hidden states and a
    ``torch.rand_like`` copy, then logits over the whole vocabulary (gathered across TP ranks), see
    :func:`_sampler_bytes_per_logit`.
    """
    h = spec.hidden_size
    tp = layout.tp
    heads_r = layout.heads_per_rank
    kv_r = layout.kv_heads_per_rank
    if spec.mla is not None:
        m = spec.mla
        attn = (heads_r * (m.qk_nope_head_dim + m.qk_rope_head_dim)  # q
                + m.latent_dim  # compressed kv
                + heads_r * (m.qk_nope_head_dim + m.v_head_dim)  # kv_b_proj output
                + heads_r * m.v_head_dim)  # attention output
    else:
        attn = heads_r * spec.head_dim + kv_r * (spec.head_dim + spec.v_head_dim) + heads_r * spec.v_head_dim
    dense_width = _cdiv(spec.intermediate_size, tp)
    dense = (3 if spec.ffn_gated else 2) * dense_width
    per_token = max(attn, dense if (spec.moe is None or spec.moe.num_dense_layers) else 0)
    moe_bytes = 0
    if spec.moe is not None:
        moe = spec.moe
        expert_width = _cdiv(moe.expert_intermediate_size, tp)
        n = 2 * expert_width if spec.ffn_gated else expert_width
        m_tokens = min(tokens, FUSED_MOE_CHUNK)
        cache13 = m_tokens * moe.experts_per_token * max(n, h)
        cache2 = m_tokens * moe.experts_per_token * (n // 2 if spec.ffn_gated else n)
        # The routed output and, with shared experts, the shared branch's output are [T, h] each.
        outputs = tokens * h * (2 if moe.num_shared_experts else 1)
        moe_bytes = (cache13 + cache2 + outputs) * e
    forward = tokens * 3 * h * e + max(tokens * per_token * e, moe_bytes)
    sampler_peak = 0
    if last_stage:
        vocab = spec.vocab_size
        padded = padded_vocab(vocab)
        if logits == "all_tokens":
            # V1 0.7.0 profile_run: compute_logits over every batched token, [T, vocab] in the model dtype,
            # gathered to the full vocabulary beside each rank's [T, padded / tp] shard.
            shard = _cdiv(padded, tp) if tp > 1 else 0
            sampler_peak = tokens * h * e + tokens * (padded + shard) * e
        elif logits == "per_request":
            # V1 0.7.3 profile_run: hidden_states[logit_indices], logits for one row per request, no sampler.
            sampler_peak = tokens * h * e + seqs * h * e + seqs * padded * e
        else:
            assert sampler is not None  # a profile run with a sampler pass has a sampler
            per_logit = _sampler_bytes_per_logit(e, sampler, flashinfer_call)
            # The model-dtype logits span the padded vocabulary before the slice to vocab_size.
            pad_extra = (padded - vocab) * e
            sampler_peak = tokens * h * e + 2 * seqs * h * e + seqs * (vocab * per_logit + pad_extra)
    return forward, sampler_peak


def _group_blocks_for(length: int, window: int | None, block_size: int, max_num_batched_tokens: int) -> int:
    if window == STATE_GROUP:
        return 1
    if window is None:
        return _cdiv(length, block_size)
    return _cdiv(min(window - 1 + max_num_batched_tokens, length), block_size) + 1


class _Setup(NamedTuple):
    """The inputs of one budget after the release's defaults are applied (built from values already checked, so
    a plain named tuple: a plan builds one per layout it tries)."""

    release: VllmRelease
    engine: Engine
    layout: ParallelLayout
    utilization: float
    model_len: int
    auto_len: bool
    batched: int
    seqs: int
    block_size: int
    sampler: SamplerKind | None
    hybrid: bool
    kv_dtype: str
    kv_bytes: int
    page: int


def _setup(spec: ModelSpec, precision: Precision, gpu_memory_bytes: int, *, tp: int, pp: int,
           gpu_memory_utilization: float | None, max_model_len: int | None, max_num_seqs: int | None,
           max_num_batched_tokens: int | None, block_size: int | None, kv_cache_dtype: str | None,
           engine: Engine | None, gpu_name: str | None, usage_context: UsageContext, sampler: SamplerKind | None,
           flashinfer_sampler: bool | None, flashinfer_supported: bool, hybrid_kv_cache_manager: bool | None,
           engine_version: str | None) -> _Setup:
    release = vllm_release(engine_version)
    if engine is None:
        engine = release.engines[0]
    elif engine not in release.engines:
        raise InputError(f"vLLM {release.version} has no {engine.upper()} engine",
                         hint=f"it ships {', '.join(e.upper() for e in release.engines)}")
    utilization = release.gpu_memory_utilization if gpu_memory_utilization is None else gpu_memory_utilization
    if not 0 < utilization <= 1:
        raise InputError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    if gpu_memory_bytes <= 0:
        raise InputError("GPU memory must be positive")
    block = release.block_size if block_size is None else block_size
    if block < 1:
        raise InputError(f"block_size must be at least 1, got {block}")
    layout = parallel_layout(spec, precision, tp, pp)
    auto_len = max_model_len == -1
    if auto_len and not release.max_model_len_auto:
        raise InputError(f"vLLM {release.version} has no --max-model-len auto (-1)",
                         hint="releases from 0.14.0 have it; give a length")
    model_len = spec.max_position_embeddings if auto_len or max_model_len is None else max_model_len
    if model_len is None:
        raise InputError("the model's config gives no context length", hint="pass max_model_len")
    if model_len < 1:
        raise InputError(f"max_model_len must be at least 1, got {model_len}")
    default_tokens, default_seqs = release_batch_limits(
        release, engine, gpu_memory_bytes, gpu_name, usage_context, model_len,
        _has_sliding_window(spec))
    kv_dtype = engine_kv_dtype(precision, kv_cache_dtype)
    kv_bytes = DTYPE_BYTES[kv_dtype]
    return _Setup(
        release=release, engine=engine, layout=layout, utilization=utilization, model_len=model_len,
        auto_len=auto_len, batched=max_num_batched_tokens or default_tokens, seqs=max_num_seqs or default_seqs,
        block_size=block, sampler=(profile_sampler(release, engine, flashinfer_sampler, flashinfer_supported)
                                   if sampler is None else sampler),
        hybrid=engine == "v1" and (release.hybrid_kv if hybrid_kv_cache_manager is None
                                   else hybrid_kv_cache_manager),
        kv_dtype=kv_dtype, kv_bytes=kv_bytes, page=kv_page_size(spec, layout.kv_heads_per_rank, kv_bytes, block))


class _Stage(NamedTuple):
    """One pipeline stage's pool."""

    blocks: int
    available: int
    weights: int
    forward: int
    sampler: int
    activation: int
    non_torch: int
    cuda_graph: int
    counts: tuple[int, ...]
    group_size: int


@per_spec
def _stage_kinds(spec: ModelSpec, precision: Precision, tp: int, pp: int, group_layers: tuple[tuple[int, ...], ...]
                 ) -> tuple[tuple[int, bool, tuple[int, ...]], ...]:
    """The pipeline stages as (weight bytes, holds the LM head, layers of each KV cache group), each distinct
    one once, in the order of its first stage. A stage's pool follows from these alone, so a 61-stage layout
    is sized a handful of times, not 61. (A layer may be in two groups.)"""
    # What each stage's load allocates: the caching allocator's blocks, rotary cache included (weight_blocks).
    stage_weights = [blocks.allocated for blocks in weight_blocks(spec, precision, tp, pp)]
    ordered = [sorted(g) for g in group_layers]
    kinds: dict[tuple[int, bool, tuple[int, ...]], None] = {}
    start = 0
    for stage, layers in enumerate(pp_layer_split(spec.num_hidden_layers, pp)):
        end = start + layers
        counts = tuple(bisect_left(g, end) - bisect_left(g, start) for g in ordered)
        kinds.setdefault((stage_weights[stage], stage == pp - 1, counts))
        start = end
    return tuple(kinds)


def _size_stages(spec: ModelSpec, precision: Precision, st: _Setup, group_layers: tuple[tuple[int, ...], ...], *,
                 total: int, requested: int, kv_cache_memory: int | None, non_torch_bytes: int | None,
                 cuda_graph: int) -> _Stage:
    """Each pipeline stage sizes its own pool; the engine keeps the smallest block count (the first such stage:
    the kinds come in the order of their first stage, and a later one replaces it only with fewer blocks)."""
    pp = st.layout.pp
    logits = "sampler" if st.engine == "v0" else st.release.profile_logits
    # The profile run's activations differ between stages only in whether the stage holds the LM head.
    profiles = {last: profile_activation(spec, st.layout, precision.compute_bytes, st.batched,
                                         min(st.seqs, st.batched), last_stage=last, sampler=st.sampler,
                                         logits=logits, flashinfer_call=st.release.flashinfer_call)
                for last in {stage == pp - 1 for stage in range(pp)}}
    # The V0 rules that read the caching allocator: 0.3.1-0.6.3 the reserved peak, 0.6.5-0.10.2 the rise of the
    # allocated peak (utils.py memory_profiling, allocated_bytes.all.peak, 0.6.5 and 0.6.6).
    replayed_rule = st.release.v0_budget_rule if st.engine == "v0" and st.release.v0_budget_rule in (
        "reserved_peak", "snapshot") else None
    best: _Stage | None = None
    for weights, last, counts in _stage_kinds(spec, precision, st.layout.tp, pp, group_layers):
        forward, samp = profiles[last]
        activation = max(forward, samp)
        if replayed_rule is not None:
            activation = _v0_replayed_activation(spec, precision, st, sum(counts), last,
                                                 reserved=replayed_rule == "reserved_peak") or activation
        c = charge(st.release, st.engine, requested=requested, total=total, weights=weights,
                   activation=activation, tp=st.layout.tp, non_torch=non_torch_bytes, cuda_graph=cuda_graph)
        available = c.available if kv_cache_memory is None else kv_cache_memory
        group_size = max(counts)
        if st.engine == "v0":
            layers = sum(counts)
            blocks = max(0, available // (st.page * layers)) if layers else 0
        else:
            blocks = max(0, available // st.page // group_size) if group_size else 0
        if best is None or blocks < best.blocks:
            best = _Stage(blocks=blocks, available=available, weights=weights, forward=forward, sampler=samp,
                          activation=activation, non_torch=c.non_torch, cuda_graph=c.cuda_graph, counts=counts,
                          group_size=group_size)
    assert best is not None  # every layout has a stage
    return best


def _longest_that_fits(upper: int, fits, guess: int = 1) -> int:
    """_estimate_max_model_len_from_groups: the longest context up to ``upper`` that fits (0 when one token does
    not), ``fits`` being true up to some length and false beyond, as vLLM's binary search finds it. The search
    starts at ``guess`` and gallops from there before it bisects: the same length, from a guess near it in a
    few tries instead of about twenty (a plan asks once per layout it tries)."""
    if not fits(1):
        return 0
    lo, hi = 1, upper  # fits(lo), and the longest is in [lo, hi]
    if lo < guess <= hi:
        step = 1
        if fits(guess):
            lo = guess
            while lo < hi:
                probe = min(lo + step, hi)
                if not fits(probe):
                    hi = probe - 1
                    break
                lo, step = probe, step * 2
        else:
            hi = guess - 1
            while lo < hi:
                probe = max(hi - step + 1, lo + 1)
                if fits(probe):
                    lo = probe
                    break
                hi, step = probe - 1, step * 2
    return largest_fitting(lo, hi, fits)


def _v1_layout(spec: ModelSpec, st: _Setup, stage: _Stage, group_windows: Sequence[int | None]) -> dict:
    """Tokens, blocks per request, concurrency and the longest context for V1's grouped pool."""
    num_blocks = stage.blocks

    def blocks_needed(length: int) -> int:
        return sum(_group_blocks_for(length, w, st.block_size, st.batched) for w in group_windows)

    per_request = blocks_needed(st.model_len)
    concurrency = num_blocks / per_request
    report = st.release.token_report
    if report == "concurrency":
        tokens = int(concurrency * st.model_len)
    elif report == "blocks_per_group":
        tokens = num_blocks // len(group_windows) * st.block_size
    else:
        tokens = num_blocks * st.block_size
    group_bytes = stage.group_size * st.page
    # From 0.29 the one-request check and the auto-fit plan against the pool less the null block (one block
    # of every group); the pool itself keeps all num_blocks.
    usable = stage.available - (group_bytes if st.release.null_block_reserved else 0)
    upper = max(st.model_len, spec.max_position_embeddings or st.model_len)
    # Where the search starts: the length whose full-attention blocks fill what the other groups leave at
    # their most (exact once the sliding-window groups are full; the search finds the length either way).
    full = sum(1 for w in group_windows if w is None)
    guess = upper
    if full and group_bytes > 0:
        others = blocks_needed(upper) - full * _cdiv(upper, st.block_size)
        guess = min(max((usable // group_bytes - others) // full * st.block_size, 1), upper)
    longest = _longest_that_fits(upper, lambda n: group_bytes * blocks_needed(n) <= usable, guess)
    return {"tokens": tokens, "blocks_per_request": per_request, "concurrency": concurrency,
            "fits": stage.available > 0 and group_bytes * per_request <= usable,
            "max_len_fit": longest, "needed": group_bytes * per_request}


def _auto_fit(spec: ModelSpec, st: _Setup, stage: _Stage, group_windows: list[int | None]) -> tuple[_Setup, dict]:
    """``--max-model-len auto`` / ``-1`` (kv_cache_utils.py ``_auto_fit_max_model_len``, 0.14.0; 0.34.0
    kv_cache_planning.py): the model's context when one request of it fits, else the longest length that
    fits, found by binary search over the groups' blocks. The setup comes back at that length, with its
    layout; vLLM's log line is added to the layout as ``auto_line``. Nothing fits: the context is kept, the
    budget does not fit, and vLLM's error line says so."""
    kv = _v1_layout(spec, st, stage, group_windows)
    context = st.model_len
    fitted = min(context, kv["max_len_fit"])
    available = f"{stage.available / GiB:.2f} GiB available for KV cache"
    if fitted <= 0:
        kv["auto_line"] = ("Cannot auto-fit max_model_len: not enough GPU memory available to serve even a single "
                           "token. Try increasing `gpu_memory_utilization`.")
        return st, kv
    if fitted == context:
        kv["auto_line"] = f"Auto-fit max_model_len: full model context length {context} fits in available GPU memory"
        return st, kv
    st = st._replace(model_len=fitted)
    kv = _v1_layout(spec, st, stage, group_windows)
    kv["auto_line"] = (f"Auto-fit max_model_len: reduced from {context} to {fitted} to fit in available GPU "
                       f"memory ({available})")
    return st, kv


def _v0_replayed_activation(spec: ModelSpec, precision: Precision, st: _Setup, layers: int, last: bool, *,
                            reserved: bool) -> int:
    """The V0 profile run replayed through the caching allocator (gpuplan.engines.vllm_v0_reserved): what it
    leaves reserved (0.3.1-0.6.3) or its peak of live tensors (0.6.5-0.10.2); 0 for a model whose V0 modules are
    not written there."""
    shape = profile_shape(spec, st.layout, parse_release(st.release.version), e=precision.compute_bytes,
                          tokens=st.batched, seqs=st.seqs, layers=layers, last_stage=last)
    if shape is None:
        return 0
    run = profile_reservation(shape)
    return run.peak_reserved if reserved else run.peak_allocated


def vllm_budget(
    spec: ModelSpec,
    precision: Precision,
    gpu_memory_bytes: int,
    *,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    block_size: int | None = None,
    kv_cache_dtype: str | None = None,
    kv_cache_memory: int | None = None,
    engine: Engine | None = None,
    gpu_name: str | None = None,
    usage_context: UsageContext = "openai",
    sampler: SamplerKind | None = None,
    flashinfer_sampler: bool | None = None,
    flashinfer_supported: bool = True,
    non_torch_bytes: int | None = None,
    hybrid_kv_cache_manager: bool | None = None,
    engine_version: str | None = None,
    mamba_cache_dtype: MambaDtype = "auto",
    mamba_ssm_cache_dtype: MambaDtype = "auto",
    enforce_eager: bool = False,
    cuda_platform: bool = True,
) -> VllmBudget:
    """vLLM ``engine_version``'s KV cache budget for ``spec`` on GPUs of ``gpu_memory_bytes`` (the total CUDA
    reports: ``torch.cuda.mem_get_info()[1]``, which is a few hundred MiB under nvidia-smi's figure).

    ``engine_version`` (default: the newest release read, gpuplan.engines.vllm_releases.NEWEST) picks the
    budget rule, the defaults (utilization, block size, batch limits), the profile run and the KV layout;
    ``engine``, ``sampler`` and ``hybrid_kv_cache_manager`` override the release's choice; ``flashinfer_sampler`` is
    VLLM_USE_FLASHINFER_SAMPLER (None: unset, the release's default on a GPU FlashInfer supports, which
    ``flashinfer_supported`` says).
    ``max_model_len=-1`` is ``--max-model-len auto``. ``enforce_eager`` captures no CUDA graphs;
    ``cuda_platform`` False (AMD, Intel GPUs) leaves the graph estimate out of 0.20-0.33's charge.
    """
    refuse_unmodelled_caches(NAME, spec)
    st = _setup(spec, precision, gpu_memory_bytes, tp=tp, pp=pp, gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
                kv_cache_dtype=kv_cache_dtype, engine=engine, gpu_name=gpu_name, usage_context=usage_context,
                sampler=sampler, flashinfer_sampler=flashinfer_sampler, flashinfer_supported=flashinfer_supported,
                hybrid_kv_cache_manager=hybrid_kv_cache_manager, engine_version=engine_version)
    total = gpu_memory_bytes
    # utils.py request_memory (0.34.0) rounds up; earlier releases multiply floats (the difference is a byte).
    requested = int(total * st.utilization)
    group_layers, group_windows = _kv_groups(spec, st.hybrid)
    state_pages = None
    if st.engine == "v1" and spec.has_state_layers:
        dtypes = state_dtypes(spec, precision.compute_dtype, mamba_cache_dtype, mamba_ssm_cache_dtype)
        state_pages = hybrid_state_pages(spec, tp, st.kv_bytes, st.block_size, st.model_len, hybrid_windows=st.hybrid,
                                         state_dtypes=dtypes)
        st = st._replace(page=state_pages.page_size, block_size=state_pages.block_size)
        group_layers, group_windows = state_pages.groups, state_pages.windows
    stage = _size_stages(spec, precision, st, group_layers, total=total, requested=requested,
                         kv_cache_memory=kv_cache_memory, non_torch_bytes=non_torch_bytes,
                         cuda_graph=graph_estimate(st.release, enforce_eager=enforce_eager,
                                                   cuda_platform=cuda_platform))
    num_blocks = stage.blocks
    if st.engine == "v0":
        groups = (KvGroup(window=None, layers=sum(stage.counts)),)
        group_size = sum(stage.counts)
        tokens = num_blocks * st.block_size
        kv = {"tokens": tokens, "blocks_per_request": _cdiv(st.model_len, st.block_size),
              "concurrency": tokens / st.model_len, "fits": st.model_len <= tokens, "max_len_fit": tokens,
              "needed": group_size * st.page * _cdiv(st.model_len, st.block_size)}
    else:
        groups = tuple(KvGroup(window=w, layers=c) for w, c in zip(group_windows, stage.counts, strict=True))
        group_size = stage.group_size
        if st.auto_len:
            st, kv = _auto_fit(spec, st, stage, group_windows)
        else:
            kv = _v1_layout(spec, st, stage, group_windows)
    release = st.release
    auto = None
    if release.max_model_len_auto:
        auto = min(spec.max_position_embeddings or st.model_len, kv["max_len_fit"])
    suggested = None
    if release.kv_cache_memory_flag and st.engine == "v1":
        suggested = kv_cache_memory_suggestions(
            requested=requested, total=total, weights=stage.weights, activation=stage.activation,
            non_torch=stage.non_torch, captured_graphs=captured_graph_bytes(enforce_eager))
    logs = _log_lines(release, st.engine, stage.weights, stage.available, kv["tokens"], num_blocks, st.model_len,
                      kv["concurrency"], kv["fits"], kv["max_len_fit"], kv["needed"])
    if "auto_line" in kv:
        # vLLM stops at the auto-fit error; otherwise its line comes before the KV cache report.
        after = () if kv["auto_line"].startswith("Cannot auto-fit") else logs[2:]
        logs = (*logs[:2], kv["auto_line"], *after)
    if st.engine == "v1" and release.budget_rule == "cuda_graph" and kv_cache_memory is None and stage.cuda_graph:
        logs = _with_cuda_graph_lines(logs, st, stage.cuda_graph, total)
    if st.sampler == "flashinfer":
        # Printed when the model runner builds its sampler, before the weights load.
        logs = (FLASHINFER_SAMPLER_LINE, *logs)
    if state_pages is not None:
        logs = state_pages.log_lines + logs
    given = kv_cache_memory is not None
    return VllmBudget(
        engine_version=release.version, release_era=release.era,
        budget_rule=release.v0_budget_rule if st.engine == "v0" else release.budget_rule,
        engine=st.engine, tp=tp, pp=pp, total_gpu_memory=total, gpu_memory_utilization=st.utilization,
        requested=requested, weights=stage.weights, activation_peak=stage.activation,
        activation_forward=stage.forward, activation_sampler=stage.sampler, sampler=st.sampler,
        non_torch=0 if given else stage.non_torch, cuda_graph=stage.cuda_graph or None,
        available_kv=stage.available, kv_cache_memory_given=given, block_size=st.block_size,
        kv_dtype=st.kv_dtype, kv_bytes_per_element=st.kv_bytes, page_size_per_layer=st.page, groups=groups,
        group_size=group_size, num_blocks=num_blocks, kv_cache_tokens=kv["tokens"], max_model_len=st.model_len,
        max_num_seqs=st.seqs, max_num_batched_tokens=st.batched, blocks_per_request=kv["blocks_per_request"],
        max_concurrency=kv["concurrency"], fits_one_request=kv["fits"], max_model_len_that_fits=kv["max_len_fit"],
        max_model_len_auto=auto,
        kv_cache_memory_to_pin=(num_blocks * group_size * st.page
                                if release.kv_cache_memory_flag and st.engine == "v1" else None),
        kv_cache_memory_suggested=suggested, log_lines=logs,
    )


def _gib2(n: int) -> str:
    return f"{n / GiB:.2f}"


def _log_lines(release: VllmRelease, engine: Engine, weights: int, available: int, tokens: int, num_blocks: int,
               model_len: int, concurrency: float, fits: bool, max_len_fit: int, needed: int) -> tuple[str, ...]:
    """The startup lines vLLM prints, with its formats (gpu_model_runner.py, gpu_worker.py,
    kv_cache_utils.py for V1; worker.py / executor_base.py / llm_engine.py for V0)."""
    if engine == "v0":
        lines = [f"model weights take {_gib2(weights)}GiB",
                 f"the rest of the memory reserved for KV Cache is {_gib2(available)}GiB.",
                 f"# GPU blocks: {num_blocks}",
                 f"Maximum concurrency for {model_len} tokens per request: {concurrency:.2f}x"]
        if not fits:
            lines.append(f"The model's max seq len ({model_len}) is larger than the maximum number of tokens "
                         f"that can be stored in KV cache ({tokens}). Try increasing "
                         "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the "
                         "engine.")
        return tuple(lines)
    lines = [f"Model loading took {_gib2(weights)} GiB memory",
             f"Available KV cache memory: {_gib2(available)} GiB"]
    if available <= 0:
        lines.append("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                     "initializing the engine.")
        return tuple(lines)
    if not fits:
        estimate = (f"Based on the available memory, the estimated maximum model length is {max_len_fit}. "
                    if max_len_fit > 0 else "")
        lines.append(f"To serve at least one request with the models's max seq len ({model_len}), "
                     f"({needed / GiB:.2f} GiB KV cache is needed, which is larger than the available KV "
                     f"cache memory ({available / GiB:.2f} GiB). {estimate}Try increasing "
                     "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
        return tuple(lines)
    if release.token_report == "blocks" and release.profile_logits != "sampler":
        # 0.7.x kv_cache_utils.py: "# GPU blocks: N" and the concurrency over blocks x block_size.
        lines += [f"# GPU blocks: {num_blocks}",
                  f"Maximum concurrency for {model_len} tokens per request: {concurrency:.2f}x"]
        return tuple(lines)
    lines += [f"GPU KV cache size: {tokens:,} tokens",
              f"Maximum concurrency for {model_len:,} tokens per request: {concurrency:.2f}x"]
    return tuple(lines)


def _with_cuda_graph_lines(logs: tuple[str, ...], st: _Setup, cuda_graph: int, total: int) -> tuple[str, ...]:
    """0.20-0.33: the memory profiler's graph lines around "Available KV cache memory" (``logs[1]``):
    gpu_model_runner.py ``profile_cudagraph_memory`` before it, gpu_worker.py ``determine_available_memory``
    after it."""
    graphs = profiled_graphs(st.release, st.seqs, st.batched)
    before = (graphs.log_line,) if graphs is not None else ()
    before += (f"Estimated CUDA graph memory: {_gib2(cuda_graph)} GiB total",)
    return (logs[0], *before, logs[1], utilization_line(st.utilization, cuda_graph, total), *logs[2:])


# ---- the vLLM engine: options and the estimate behind `--engine vllm` -------------------------------------

NAME = "vllm"
SUMMARY = "vLLM's startup budget: the KV cache it allocates, and how many requests fit"
SERVING = True
BUDGETS_WHOLE_GPU = False
MEMORY_FRACTION_OPTION = "gpu_memory_utilization"
# Another node adds pipeline stages over the same layers: a GPU holds no more layers' weights and KV cache,
# and what vLLM charges besides (its budget fraction, the profile run's activations, non-torch memory, CUDA
# graphs) does not grow with the stages; so fitting on n nodes means fitting on more (tests/test_planner.py
# checks the planner's search against trying every layout).
FITS_MORE_WITH_MORE_NODES = True


class Options(EngineOptions):
    """vLLM's flags that decide its memory budget, named as `vllm serve` names them."""

    engine_version: str | None = Field(
        default=None, description="vLLM release whose startup budget is modelled, 0.2.5 to 0.34.0 (default: the "
                                  "vllm installed here, else 0.34.0).", json_schema_extra={"metavar": "X.Y.Z"})
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1,
        description="fraction of GPU memory vLLM may use (default: the release's, 0.9 up to 0.19, 0.92 from 0.20, "
                    "1.0 in 0.34).")
    max_model_len: int | None = Field(
        default=None, ge=-1, description="context length per request (default: --seq, else the model's); auto or "
                                         "-1: the longest that fits, up to the model's (vLLM 0.14.0+); a list "
                                         "sweeps: 8k,32k.", json_schema_extra={"sweep": True, "metavar": "TOKENS"})
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequences per batch (default: vLLM's rule "
                                                                       "by GPU).")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="tokens per forward pass (sets the profile run's activations).")
    block_size: int | None = Field(default=None, ge=1, description="tokens per KV cache block (default: the "
                                                                      "release's, 16; 64 in 0.34).")
    kv_cache_memory: int | None = Field(
        default=None, gt=0, description="fixed KV cache size per GPU, e.g. 40GiB (skips the profiling budget).",
        json_schema_extra={"metavar": "SIZE"})

    enforce_eager: bool = Field(
        default=False, description="no CUDA graphs: from 0.20 vLLM charges no graph estimate before the KV cache "
                                   "(0.44 GiB otherwise); the profile run is modelled the same.")
    flashinfer_sampler: bool | None = Field(
        default=None, description="VLLM_USE_FLASHINFER_SAMPLER=1 / 0: the profile run's dummy sampler pass uses "
                                  "FlashInfer, or vLLM's PyTorch path (a vocabulary sort up to 0.16); default: "
                                  "what the release does with the packages pip installs, FlashInfer from 0.21 on "
                                  "GPUs it supports, else the PyTorch path.")

    mamba_cache_dtype: MambaDtype = Field(
        default="auto", description="dtype of the Mamba / linear-attention state of hybrid models, conv and "
                                    "temporal: auto (the model dtype), float32, float16 or bfloat16.",
        json_schema_extra={"metavar": "DTYPE"})
    mamba_ssm_cache_dtype: MambaDtype = Field(
        default="auto", description="dtype of the temporal (SSM) state alone: auto (as --mamba-cache-dtype, or "
                                    "what the model's config asks for), float32, float16 or bfloat16.",
        json_schema_extra={"metavar": "DTYPE"})

    _tokens = tokens_validator("max_num_batched_tokens")
    _model_len = auto_tokens_validator("max_model_len")
    _size = size_validator("kv_cache_memory")


def estimate(model: Any, request: PrecisionRequest, workload: Workload, hardware: Hardware,
             options: Options) -> EngineEstimate:
    """vLLM's budget on ``hardware``: the workload's seq is max_model_len, its batch the concurrency to fit."""
    from gpuplan.engines.serving import beyond_context, prepare, serving_estimate

    capacity, precision, length, notes, version = prepare(NAME, model, request, workload, hardware, options)
    spec = model.spec
    if spec.has_state_layers:
        notes.append("the profile run's activations of Mamba / linear-attention mixers are not modelled (those of "
                     "the attention and MLP blocks are)")
    else:
        given = [f for f in ("mamba_cache_dtype", "mamba_ssm_cache_dtype") if getattr(options, f) != "auto"]
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} applies to models with Mamba / linear-attention "
                             "layers", hint=f"{spec.model_type} has none")
    b = vllm_budget(spec, precision, capacity, tp=hardware.tensor_parallel, pp=hardware.pipeline_parallel,
                    gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=length,
                    max_num_seqs=options.max_num_seqs, max_num_batched_tokens=options.max_num_batched_tokens,
                    block_size=options.block_size, kv_cache_memory=options.kv_cache_memory, gpu_name=hardware.gpu,
                    engine_version=version, mamba_cache_dtype=options.mamba_cache_dtype,
                    mamba_ssm_cache_dtype=options.mamba_ssm_cache_dtype, flashinfer_sampler=options.flashinfer_sampler,
                    flashinfer_supported=flashinfer_supports(vllm_release(version), hardware.architecture),
                    enforce_eager=options.enforce_eager, cuda_platform=is_cuda_platform(hardware.architecture))
    serving = ServingBudget(
        engine=NAME, engine_version=b.engine_version, gpu_memory_bytes=capacity,
        memory_fraction=b.gpu_memory_utilization, kv_cache_tokens=b.kv_cache_tokens, max_model_len=b.max_model_len,
        max_concurrency=b.max_concurrency, fits_one_request=b.fits_one_request,
        max_model_len_that_fits=b.max_model_len_that_fits, max_model_len_auto=b.max_model_len_auto,
        kv_cache_memory_bytes=b.kv_cache_memory_to_pin, num_blocks=b.num_blocks, max_num_seqs=b.max_num_seqs,
        max_num_batched_tokens=b.max_num_batched_tokens, sampler=b.sampler, log_lines=list(b.log_lines))
    kv_pool = max(0, b.num_blocks) * b.page_size_per_layer * b.group_size
    return serving_estimate(serving, precision, workload, hardware, kv_dtype=b.kv_dtype, weights=b.weights,
                            kv_bytes=kv_pool, activation=b.activation_peak,
                            overhead=b.non_torch + (b.cuda_graph or 0), notes=notes,
                            refused=beyond_context(NAME, spec, length))


# vLLM's --dtype names for the float dtypes gpuplan plans with.
_VLLM_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def launch_command(model: str, result: Any, *, nodes: int, dtype: str | None, kv_cache_dtype: str | None,
                   options: Options, expert_parallel: bool = False, quantization: str | None = None) -> list[str]:
    """`vllm serve` for a planned deployment, with every setting that was planned spelled out; on several
    nodes, the Ray cluster it runs on. ``quantization``: the --quantization that loads the planned weights
    (fp8 or bitsandbytes quantized on load, awq / gptq for a pre-quantized checkpoint)."""
    tp, pp = result.tensor_parallel, result.pipeline_parallel
    cmd = f"vllm serve {model} --tensor-parallel-size {tp}"
    if options.flashinfer_sampler is not None:  # an environment variable, not a flag (vllm/envs.py)
        cmd = f"VLLM_USE_FLASHINFER_SAMPLER={int(options.flashinfer_sampler)} {cmd}"
    if pp > 1:
        cmd += f" --pipeline-parallel-size {pp}"
    cmd += f" --max-model-len {result.seq}"
    if dtype in _VLLM_DTYPES:
        cmd += f" --dtype {_VLLM_DTYPES[dtype]}"
    if quantization:
        cmd += f" --quantization {quantization}"
    if kv_cache_dtype == "fp8":
        cmd += " --kv-cache-dtype fp8"
    given = options.model_fields_set
    if "gpu_memory_utilization" in given:
        cmd += f" --gpu-memory-utilization {options.gpu_memory_utilization:g}"
    for field, flag in (("max_num_seqs", "--max-num-seqs"), ("max_num_batched_tokens", "--max-num-batched-tokens"),
                        ("block_size", "--block-size"), ("kv_cache_memory", "--kv-cache-memory-bytes"),
                        ("mamba_cache_dtype", "--mamba-cache-dtype"),
                        ("mamba_ssm_cache_dtype", "--mamba-ssm-cache-dtype")):
        if field in given and getattr(options, field) is not None:
            cmd += f" {flag} {getattr(options, field)}"
    if options.enforce_eager:
        cmd += " --enforce-eager"
    if expert_parallel:
        cmd += " --enable-expert-parallel"
    if nodes == 1:
        return [cmd]
    # vLLM's multi-node serving runs on a Ray cluster (docs: "Distributed inference and serving").
    return [
        "ray start --head --port=6379                      # on the first node",
        "ray start --address=<head-node-ip>:6379          # on each of the other "
        f"{nodes - 1} node(s)",
        cmd + " --distributed-executor-backend ray   # on the head node",
    ]


# ------------------------------------------------------------------------------------------------
# Hybrid models: state pages of Mamba / linear-attention layers beside the attention pages.
# ------------------------------------------------------------------------------------------------

STATE_GROUP = 0
"""The window value that marks a KV cache group of state layers: a request takes one block of it."""
# vllm/model_executor/models/config.py @ 0144dd5, HybridAttentionMambaModelConfig.verify_and_update_config:
# the attention block size becomes a multiple of 16 tokens ("some attention backends (e.g. FA) only support
# setting block size to multiple of 16").
HYBRID_BLOCK_ALIGN = 16


class HybridPages(BaseModel):
    """The page layout vLLM gives a model with state layers (``HybridAttentionMambaModelConfig``)."""

    # defer_build: only models with Mamba / linear-attention layers use it.
    model_config = ConfigDict(frozen=True, defer_build=True)

    block_size: int
    page_size: int
    """Bytes of one block of one layer, attention and padded state pages alike."""
    state_page_size: int
    """Bytes of one layer's state for one request before padding (vllm/v1/kv_cache_interface.py MambaSpec)."""
    groups: tuple[tuple[int, ...], ...]
    windows: tuple[int | None, ...]
    log_lines: tuple[str, ...]


_STATE_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}
# vllm/model_executor/models/config.py (0.34.0): NemotronHForCausalLMConfig.update_mamba_ssm_cache_dtype reads
# the config's mamba_ssm_cache_dtype (DEFAULT_MAMBA_SSM_CACHE_DTYPE "float32"); Qwen3_5ForConditionalGeneration-
# Config its mamba_ssm_dtype (when set). Both only when --mamba-ssm-cache-dtype is auto.
_SSM_DTYPE_FROM_CONFIG: dict[str, tuple[str, str | None]] = {
    "nemotron_h": ("mamba_ssm_cache_dtype", "float32"),
    **dict.fromkeys(("qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text"), ("mamba_ssm_dtype", None))}


class StateDtypes(BaseModel):
    """The dtypes vLLM stores a state layer's conv and temporal state in."""

    # defer_build: only models with Mamba / linear-attention layers use it.
    model_config = ConfigDict(frozen=True, defer_build=True)

    conv: str
    ssm: str
    """"auto": the same as ``conv``, except for Kimi's KDA layers (float32) (mamba_utils.py kda_state_dtype)."""


def state_dtypes(spec: ModelSpec, model_dtype: str, mamba_cache_dtype: MambaDtype = "auto",
                 mamba_ssm_cache_dtype: MambaDtype = "auto") -> StateDtypes:
    """vllm/model_executor/layers/mamba/mamba_utils.py (0.34.0) MambaStateDtypeCalculator: the conv state in
    --mamba-cache-dtype ("auto": the model dtype, utils/torch_utils.py get_kv_cache_torch_dtype), the temporal
    state in --mamba-ssm-cache-dtype ("auto": the conv state's dtype), after the model's own defaults above.
    The KV cache dtype (--kv-cache-dtype) does not apply to state."""
    ssm: str = mamba_ssm_cache_dtype
    if ssm == "auto" and spec.model_type in _SSM_DTYPE_FROM_CONFIG:
        key, default = _SSM_DTYPE_FROM_CONFIG[spec.model_type]
        ssm = dict(spec.state_dtypes).get(key) or default or "auto"
    if ssm not in _STATE_DTYPE_BYTES and ssm != "auto":
        raise InputError(f"the config's state dtype {ssm!r} is not one vLLM knows",
                         hint="pass mamba_ssm_cache_dtype: float32, float16 or bfloat16")
    return StateDtypes(conv=model_dtype if mamba_cache_dtype == "auto" else mamba_cache_dtype, ssm=ssm)


def _state_page_bytes(lc: LayerCache, tp: int, dtypes: StateDtypes, single_dtype: bool = False) -> int:
    """One layer's state pages for one request on one rank: the temporal state split over TP ranks and the
    conv state with ``kernel - 1`` columns (vllm/model_executor/layers/mamba/mamba_utils.py
    MambaStateShapeCalculator: conv_state_shape (conv_dim / tp, conv_kernel - 1)). ``single_dtype``: MiniMax's
    lightning attention keeps one state in the conv dtype (linear_attention_state_dtype)."""
    channels = lc.conv_elems // lc.conv_kernel if lc.conv_kernel else 0
    conv = _cdiv(channels, tp) * max(0, lc.conv_kernel - 1)
    ssm = dtypes.ssm
    if single_dtype or ssm == "auto":
        # mamba_utils.py kda_state_dtype: KDA's recurrent state defaults to float32, not the conv dtype.
        ssm = "float32" if lc.mixer == "kda" and not single_dtype else dtypes.conv
    return conv * _STATE_DTYPE_BYTES[dtypes.conv] + _cdiv(lc.recurrent_elems, tp) * _STATE_DTYPE_BYTES[ssm]


def hybrid_state_pages(spec: ModelSpec, tp: int, kv_bytes: int, block_size: int, max_model_len: int,
                       *, hybrid_windows: bool = True, state_dtypes: StateDtypes | None = None) -> HybridPages:
    """How vLLM V1 lays out the KV cache of a model whose layers keep recurrent state.

    vllm/model_executor/models/config.py @ 0144dd5 (HybridAttentionMambaModelConfig): the attention block
    grows to ``16 x cdiv(state_page, 16 x attention page of one token)`` tokens when that is more than the
    block size asked for, and every state page is padded to the attention page, so one page size serves
    every layer. Attention and state layers then form KV cache groups as sliding and full layers do
    (vllm/v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_page_size); a request takes one block in
    each state group (MambaSpec.max_memory_usage_bytes is one page). A model of state layers only has one
    page per request whose block spans max_model_len (MambaModelConfig).
    """
    attention = [(i, lc) for i, lc in enumerate(spec.layer_caches) if lc.kind in ("attention", "hybrid")]
    state = [(i, lc) for i, lc in enumerate(spec.layer_caches) if lc.kind in ("state", "hybrid")]
    # Without dtypes given, the state takes the KV cache's element size (a model-dtype cache).
    dtypes = state_dtypes or StateDtypes(conv={4: "float32", 2: "bfloat16"}.get(kv_bytes, "bfloat16"), ssm="auto")
    single = spec.model_type == "minimax"
    state_page = max((_state_page_bytes(lc, tp, dtypes, single) for _, lc in state), default=0)
    lines: list[str] = []
    if not attention:
        return HybridPages(block_size=max_model_len, page_size=state_page, state_page_size=state_page,
                           groups=(tuple(i for i, _ in state),), windows=(STATE_GROUP,), log_lines=())
    token_page = max(_cdiv(lc.kv_heads, tp) * (lc.key_dim + lc.value_dim) + lc.indexer_dim
                     for _, lc in attention) * kv_bytes
    needed = HYBRID_BLOCK_ALIGN * _cdiv(state_page, HYBRID_BLOCK_ALIGN * token_page)
    if block_size < needed:
        block_size = needed
        lines.append(f"Setting attention block size to {block_size} tokens to ensure that attention page size "
                     "is >= mamba page size.")
    page = block_size * token_page
    if state_page and page > state_page:
        lines.append(f"Padding mamba page size by {100 * (page - state_page) / state_page:.2f}% to ensure that "
                     "mamba page size and attention page size are exactly equal.")
    by_type: dict[int | None, list[int]] = {STATE_GROUP: [i for i, _ in state]}
    for i, lc in attention:
        by_type.setdefault(lc.window if hybrid_windows else None, []).append(i)
    counts = [len(v) for v in by_type.values()]
    group_size = max(counts) if max(counts) < min(counts) * 1.5 else min(counts)
    groups: list[tuple[int, ...]] = []
    windows: list[int | None] = []
    for window in sorted(by_type, key=lambda w: (w == STATE_GROUP, w is not None, w or 0)):
        layers = by_type[window]
        n = _cdiv(len(layers), group_size)
        for k in range(n):
            groups.append(tuple(layers[k::n]))
            windows.append(window)
    return HybridPages(block_size=block_size, page_size=page, state_page_size=state_page, groups=tuple(groups),
                       windows=tuple(windows), log_lines=tuple(lines))
