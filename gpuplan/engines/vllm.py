"""How vLLM sizes its KV cache at startup, per GPU.

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
  (weights plus buffers such as the rotary cos/sin cache); ``torch_peak_increase`` is the peak of
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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.calc.precision import DTYPE_BYTES, Precision, engine_kv_dtype
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import EngineOptions, Hardware, PrecisionRequest, size_validator, tokens_validator
from gpuplan.engines.tp import ParallelLayout, padded_vocab, parallel_layout, pp_layer_split
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec, TensorRole
from gpuplan.results import EngineEstimate, ServingBudget

GiB = 1024**3
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_BLOCK_SIZE = 16
# non_torch_increase printed by vLLM 0.19.0 on an H100 at TP=1 for six models: 0.25-0.26 GiB ("non-torch
# forward increase memory", llm-d-incubation/llm-d-planner accuracy/results/v0.19.0/logs @ d3121e0). V0
# logs of 2024-2025 show 0.16-0.43 GiB (tests/fixtures/serving_logs.yaml). Not derived from the config.
DEFAULT_NON_TORCH_BYTES = GiB // 4
# With tensor parallelism the workers also hold communication buffers (NCCL, vLLM's custom all-reduce),
# which memory_profiling counts as non-torch memory since vllm-project/vllm#2031 ("Fix peak memory
# profiling": 31,615 -> 20,865 blocks for Llama-2-70B at TP=4). vLLM 0.19.0 printed 2.06 to 2.21 GiB per GPU
# at TP=2 and TP=4 on H100 in eight runs (tests/fixtures/serving_logs.yaml); gpuplan uses their median. Also
# a measurement, not derived from the config: NVLink topology, NCCL version and vLLM version move it.
TENSOR_PARALLEL_NON_TORCH_BYTES = round(2.085 * GiB)
# vllm/model_executor/layers/fused_moe/fused_moe.py fused_experts_impl: M = min(num_tokens, CHUNK_SIZE),
# VLLM_FUSED_MOE_CHUNK_SIZE defaults to 32768 (vllm/envs.py).
FUSED_MOE_CHUNK = 32768
FP32 = 4

Engine = Literal["v1", "v0"]
UsageContext = Literal["openai", "llm"]
SamplerKind = Literal["in_place", "sort"]


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

    engine: Engine
    tp: int
    pp: int
    total_gpu_memory: int
    gpu_memory_utilization: float
    requested: int
    weights: int
    activation_peak: int
    activation_forward: int
    activation_sampler: int
    non_torch: int
    cuda_graph: int | None = None
    """Not modelled: vLLM captures graphs after sizing the KV cache, outside this budget (0.19 logs an
    estimate of 0.8-1.1 GiB for 7-27B models)."""
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
    log_lines: tuple[str, ...]

    @property
    def kv_bytes_per_token(self) -> int:
        """Pool bytes one token of one request takes in every group (page / block_size x layers)."""
        return self.page_size_per_layer // self.block_size * self.group_size * len(self.groups)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def default_batch_limits(total_gpu_memory: int, gpu_name: str | None = None, *, engine: Engine = "v1",
                         usage_context: UsageContext = "openai",
                         max_model_len: int = 2048) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) vLLM picks when neither is given."""
    if engine == "v0":
        # V0 without chunked prefill (the default up to 32K context): max(max_model_len, 2048) tokens.
        return max(max_model_len, 2048), 256
    large = total_gpu_memory >= 70 * GiB and "a100" not in (gpu_name or "").lower()
    if large:
        return (8192 if usage_context == "openai" else 16384), 1024
    return (2048 if usage_context == "openai" else 8192), 256


def kv_page_size(spec: ModelSpec, kv_heads_per_rank: int, kv_bytes: int,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Bytes of one block of one layer (vllm/v1/kv_cache_interface.py page_size_bytes)."""
    if spec.mla is not None:
        return block_size * spec.mla.latent_dim * kv_bytes
    return block_size * kv_heads_per_rank * (spec.head_dim + spec.v_head_dim) * kv_bytes


def _kv_groups(spec: ModelSpec, hybrid: bool) -> tuple[list[list[int]], list[int | None]]:
    """vLLM's KV cache groups as lists of global layer indices, and each group's window."""
    by_type: dict[int | None, list[int]] = {}
    for i, window in enumerate(spec.layer_windows):
        key = window if hybrid and spec.mla is None else None
        by_type.setdefault(key, []).append(i)
    if len(by_type) == 1:
        ((window, layers),) = by_type.items()
        return [layers], [window]
    counts = [len(v) for v in by_type.values()]
    group_size = min(counts)
    if max(counts) < min(counts) * 1.5:
        group_size = max(counts)
    groups: list[list[int]] = []
    windows: list[int | None] = []
    # Full attention first, as vLLM lists the full-attention group first for the models seen here.
    for window in sorted(by_type, key=lambda w: (w is not None, w or 0)):
        layers = by_type[window]
        n = _cdiv(len(layers), group_size)
        for i in range(n):
            groups.append(layers[i::n])
            windows.append(window)
    return groups, windows


def _sampler_bytes_per_logit(e: int, sampler: SamplerKind) -> int:
    """Bytes alive per (request, vocab entry) at the sampler's peak.

    ``_dummy_sampler_run`` (vllm/v1/worker/gpu_model_runner.py) computes logits in the model dtype
    (``compute_logits``), then ``Sampler`` copies them to fp32; ``TopKTopPSampler.forward_native`` ends in
    ``logits.softmax(dtype=float32)`` and ``random_sample``'s ``torch.empty_like(probs).exponential_()``.
    With ``sort`` (``apply_top_k_top_p``, vllm/v1/sample/ops/topk_topp_sampler.py) the sorted fp32 values,
    int64 indices, two bool masks, the fp32 softmax of the sorted logits and the fp32 scatter result are alive
    at once; ``in_place`` is the Triton top-k/top-p kernel (vllm/v1/sample/ops/topk_topp_triton.py) that
    masks the logits in place and leaves only the softmax and the exponential draw.
    """
    fp32_copy = FP32 if e < FP32 else 0
    if sampler == "sort":
        return e + fp32_copy + FP32 + 8 + 1 + FP32 + 1 + FP32
    return e + fp32_copy + FP32 + FP32


def profile_activation(spec: ModelSpec, layout: ParallelLayout, e: int, tokens: int, seqs: int, *,
                       last_stage: bool = True, sampler: SamplerKind = "in_place") -> tuple[int, int]:
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
        per_logit = _sampler_bytes_per_logit(e, sampler)
        # The model-dtype logits span the padded vocabulary before the slice to vocab_size.
        pad_extra = (padded_vocab(vocab) - vocab) * e
        sampler_peak = tokens * h * e + 2 * seqs * h * e + seqs * (vocab * per_logit + pad_extra)
    return forward, sampler_peak


def _rope_cache_bytes(spec: ModelSpec, e: int) -> int:
    """vLLM's RotaryEmbedding registers cos_sin_cache [max_position, rotary_dim] in the model dtype
    (vllm/model_executor/layers/rotary_embedding); models with learned positions have none."""
    if any(t.role is TensorRole.POSITION_EMBEDDING for t in spec.tensors):
        return 0
    positions = spec.max_position_embeddings or 0
    rotary = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    return positions * rotary * e


def _group_blocks_for(length: int, window: int | None, block_size: int, max_num_batched_tokens: int) -> int:
    if window is None:
        return _cdiv(length, block_size)
    return _cdiv(min(window - 1 + max_num_batched_tokens, length), block_size) + 1


def vllm_budget(
    spec: ModelSpec,
    precision: Precision,
    gpu_memory_bytes: int,
    *,
    tp: int = 1,
    pp: int = 1,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    kv_cache_dtype: str | None = None,
    kv_cache_memory: int | None = None,
    engine: Engine = "v1",
    gpu_name: str | None = None,
    usage_context: UsageContext = "openai",
    sampler: SamplerKind = "in_place",
    non_torch_bytes: int | None = None,
    hybrid_kv_cache_manager: bool = True,
) -> VllmBudget:
    """vLLM's KV cache budget for ``spec`` on GPUs of ``gpu_memory_bytes`` (the total CUDA reports:
    ``torch.cuda.mem_get_info()[1]``, which is a few hundred MiB under nvidia-smi's figure).

    ``sampler="sort"`` models vLLM releases whose dummy sampler sorted the vocabulary (V0, and V1 before the
    Triton top-k/top-p kernel); ``engine="v0"`` switches the batch defaults and the log format.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise InputError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if gpu_memory_bytes <= 0:
        raise InputError("GPU memory must be positive")
    if block_size < 1:
        raise InputError(f"block_size must be at least 1, got {block_size}")
    layout = parallel_layout(spec, precision, tp, pp)
    model_len = max_model_len or spec.max_position_embeddings
    if model_len is None:
        raise InputError("the model's config gives no context length", hint="pass max_model_len")
    if model_len < 1:
        raise InputError(f"max_model_len must be at least 1, got {model_len}")

    default_tokens, default_seqs = default_batch_limits(gpu_memory_bytes, gpu_name, engine=engine,
                                                        usage_context=usage_context, max_model_len=model_len)
    batched = max_num_batched_tokens or default_tokens
    seqs = max_num_seqs or default_seqs
    sample_rows = min(seqs, batched)

    e = precision.compute_bytes
    kv_dtype = engine_kv_dtype(precision, kv_cache_dtype)
    kv_bytes = DTYPE_BYTES[kv_dtype]
    page = kv_page_size(spec, layout.kv_heads_per_rank, kv_bytes, block_size)

    total = gpu_memory_bytes
    requested = int(total * gpu_memory_utilization)
    if non_torch_bytes is not None:
        non_torch = non_torch_bytes
    else:
        non_torch = TENSOR_PARALLEL_NON_TORCH_BYTES if tp > 1 else DEFAULT_NON_TORCH_BYTES
    rope = _rope_cache_bytes(spec, e)

    hybrid = engine == "v1" and hybrid_kv_cache_manager
    group_layers, group_windows = _kv_groups(spec, hybrid)
    split = pp_layer_split(spec.num_hidden_layers, pp)

    # Each pipeline stage sizes its own pool; the engine keeps the smallest block count.
    stage_results = []
    for stage in range(pp):
        start = sum(split[:stage])
        owned = set(range(start, start + split[stage]))
        counts = [sum(1 for i in g if i in owned) for g in group_layers]
        group_size = max(counts)
        weights = layout.stage_weights_bytes[stage] + rope
        forward, samp = profile_activation(spec, layout, e, batched, sample_rows,
                                           last_stage=stage == pp - 1, sampler=sampler)
        activation = max(forward, samp)
        if kv_cache_memory is not None:
            available = kv_cache_memory
        else:
            available = requested - weights - activation - non_torch
        if engine == "v0":
            layers = sum(counts)
            blocks = max(0, available // (page * layers)) if layers else 0
        else:
            blocks = max(0, available // page // group_size) if group_size else 0
        stage_results.append((blocks, available, weights, forward, samp, activation, counts, group_size))
    limiting = min(range(pp), key=lambda s: stage_results[s][0])
    num_blocks, available, weights, forward, samp, activation, counts, group_size = stage_results[limiting]

    if engine == "v0":
        groups = (KvGroup(window=None, layers=sum(counts)),)
        tokens = num_blocks * block_size
        blocks_per_request = _cdiv(model_len, block_size)
        concurrency = tokens / model_len
        fits = model_len <= tokens
        max_len_fit = tokens
    else:
        groups = tuple(KvGroup(window=w, layers=c) for w, c in zip(group_windows, counts, strict=True))
        tokens = num_blocks // len(groups) * block_size

        def blocks_needed(length: int) -> int:
            return sum(_group_blocks_for(length, w, block_size, batched) for w in group_windows)

        blocks_per_request = blocks_needed(model_len)
        concurrency = num_blocks / blocks_per_request
        needed = group_size * page * blocks_per_request
        fits = available > 0 and needed <= available
        # _estimate_max_model_len_from_groups: binary search for the longest context that fits.
        upper = max(model_len, spec.max_position_embeddings or model_len)
        lo, hi, best = 1, upper, 0
        if group_size * page * blocks_needed(1) <= available:
            while lo <= hi:
                mid = (lo + hi) // 2
                if group_size * page * blocks_needed(mid) <= available:
                    best, lo = mid, mid + 1
                else:
                    hi = mid - 1
        max_len_fit = best

    logs = _log_lines(engine, weights, available, tokens, num_blocks, model_len, concurrency, fits,
                      max_len_fit, group_size * page * blocks_per_request)
    return VllmBudget(
        engine=engine, tp=tp, pp=pp, total_gpu_memory=total, gpu_memory_utilization=gpu_memory_utilization,
        requested=requested, weights=weights, activation_peak=activation, activation_forward=forward,
        activation_sampler=samp, non_torch=non_torch if kv_cache_memory is None else 0,
        available_kv=available, kv_cache_memory_given=kv_cache_memory is not None, block_size=block_size,
        kv_dtype=kv_dtype, kv_bytes_per_element=kv_bytes, page_size_per_layer=page, groups=groups,
        group_size=group_size if engine == "v1" else sum(counts), num_blocks=num_blocks,
        kv_cache_tokens=tokens, max_model_len=model_len, max_num_seqs=seqs, max_num_batched_tokens=batched,
        blocks_per_request=blocks_per_request, max_concurrency=concurrency, fits_one_request=fits,
        max_model_len_that_fits=max_len_fit, log_lines=logs,
    )


def _gib2(n: int) -> str:
    return f"{n / GiB:.2f}"


def _log_lines(engine: Engine, weights: int, available: int, tokens: int, num_blocks: int, model_len: int,
               concurrency: float, fits: bool, max_len_fit: int, needed: int) -> tuple[str, ...]:
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
    lines += [f"GPU KV cache size: {tokens:,} tokens",
              f"Maximum concurrency for {model_len:,} tokens per request: {concurrency:.2f}x"]
    return tuple(lines)


# ---- the vLLM engine: options and the estimate behind `--engine vllm` -------------------------------------

NAME = "vllm"
SUMMARY = "vLLM's startup budget: the KV cache it allocates, and how many requests fit"
SERVING = True


class Options(EngineOptions):
    """vLLM's flags that decide its memory budget, named as `vllm serve` names them."""

    gpu_memory_utilization: float = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1,
        description="fraction of GPU memory vLLM may use (CacheConfig default 0.9).")
    max_model_len: int | None = Field(
        default=None, ge=1, description="context length per request (default: --seq, else the model's); a "
                                        "list sweeps: 8k,32k.", json_schema_extra={"sweep": True, "metavar": "TOKENS"})
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequences per batch (default: vLLM's rule "
                                                                       "by GPU).")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="tokens per forward pass (sets the profile run's activations).")
    block_size: int = Field(default=DEFAULT_BLOCK_SIZE, ge=1, description="tokens per KV cache block.")
    kv_cache_memory: int | None = Field(
        default=None, gt=0, description="fixed KV cache size per GPU, e.g. 40GiB (skips the profiling budget).",
        json_schema_extra={"metavar": "SIZE"})

    _tokens = tokens_validator("max_model_len", "max_num_batched_tokens")
    _size = size_validator("kv_cache_memory")


def estimate(model: Any, request: PrecisionRequest, workload: Workload, hardware: Hardware,
             options: Options) -> EngineEstimate:
    """vLLM's budget on ``hardware``: the workload's seq is max_model_len, its batch the concurrency to fit."""
    from gpuplan.engines.serving import model_len, serving_estimate, serving_notes

    capacity = hardware.require_gpu(NAME)
    spec = model.spec
    precision = request.resolve(spec)
    length = model_len(spec, workload, options.max_model_len)
    notes = serving_notes(model, NAME, precision, hardware)
    b = vllm_budget(spec, precision, capacity, tp=hardware.tensor_parallel, pp=hardware.pipeline_parallel,
                    gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=length,
                    max_num_seqs=options.max_num_seqs, max_num_batched_tokens=options.max_num_batched_tokens,
                    block_size=options.block_size, kv_cache_memory=options.kv_cache_memory, gpu_name=hardware.gpu)
    serving = ServingBudget(
        engine=NAME, gpu_memory_bytes=capacity, memory_fraction=options.gpu_memory_utilization,
        kv_cache_tokens=b.kv_cache_tokens, max_model_len=b.max_model_len, max_concurrency=b.max_concurrency,
        fits_one_request=b.fits_one_request, max_model_len_that_fits=b.max_model_len_that_fits,
        num_blocks=b.num_blocks, max_num_seqs=b.max_num_seqs, max_num_batched_tokens=b.max_num_batched_tokens,
        log_lines=list(b.log_lines))
    kv_pool = max(0, b.num_blocks) * b.page_size_per_layer * b.group_size
    return serving_estimate(serving, precision, workload, hardware, kv_dtype=b.kv_dtype, weights=b.weights,
                            kv_bytes=kv_pool, activation=b.activation_peak,
                            overhead=b.non_torch + (b.cuda_graph or 0), notes=notes)
