"""How SGLang sizes its KV cache pool at startup, per GPU.

SGLang measures free memory twice, before and after loading the weights, and keeps a fixed fraction of the
first measurement for everything that is not weights or KV cache (activations, CUDA graphs)::

    rest_memory          = free_after_weights - free_before_weights x (1 - mem_fraction_static)
    max_total_num_tokens = rest_memory // cell_size          (then rounded down to page_size)
    cell_size            = kv_heads_per_rank x (head_dim + v_head_dim) x layers x kv_dtype_bytes
                           (MLA: (kv_lora_rank + qk_rope_head_dim) x layers x kv_dtype_bytes)

Sources, sgl-project/sglang (stored copies read: model_runner_kv_cache_mixin.py at 226149a,
server_args.py as indexed in 2025):

* ``python/sglang/srt/model_executor/model_runner_kv_cache_mixin.py`` ``profile_max_num_token``:
  ``rest_memory = available_gpu_memory - total_gpu_memory * (1 - mem_fraction_static)`` where
  ``available_gpu_memory`` is ``get_available_gpu_memory`` (free memory, the minimum over ranks) after the
  weights are loaded and ``total_gpu_memory`` the same measurement taken by ``ModelRunner`` after
  ``init_torch_distributed`` and before loading; ``get_cell_size_per_token`` gives the cell sizes above;
  ``init_memory_pool`` rounds to ``page_size``.
* ``python/sglang/srt/server_args.py`` ``ServerArgs._handle_gpu_memory_settings``: with ``gpu_mem`` the
  device capacity in MB (nvidia-smi's total), ``chunked_prefill_size`` / ``cuda_graph_max_bs`` default to
  2048/8 under 20 GB, 2048/(24 if tp < 4 else 80) under 35 GB, 4096/(32 or 160) under 60 GB, 8192/(256 or
  512) under 160 GB, 16384/512 above; then ``reserved_mem = 512 + max(chunked_prefill_size, 2048) x 1.5 +
  cuda_graph_max_bs x 2 + tp x pp / 8 x 1024`` MB, at least 10 GB (10240 MB) on GPUs over 60 GB, and
  ``mem_fraction_static = round((gpu_mem - reserved_mem) / gpu_mem, 3)``. DP attention, speculative
  decoding and multimodal models adjust it further (not modelled).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.calc.precision import DTYPE_BYTES, Precision, engine_kv_dtype
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import EngineOptions, Hardware, PrecisionRequest, refuse_unmodelled_caches, tokens_validator
from gpuplan.engines.sglang_releases import default_chunk_and_graph as release_chunk_and_graph
from gpuplan.engines.sglang_releases import (
    fraction_gpu_class,
    fraction_reserved,
    fraction_tp_table,
    sglang_release,
)
from gpuplan.engines.sglang_state import (
    SGLANG_STATE_MODEL_TYPES,
    SSM_DTYPE_BYTES,
    STATE_RULES_RELEASE,
    SsmDtype,
    StatePool,
    attention_cell_bytes,
    max_running_requests,
    ssm_dtype_of,
    state_per_request,
    state_pool,
)
from gpuplan.engines.tp import parallel_layout, pp_layer_split
from gpuplan.engines.weight_blocks import weight_blocks
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EngineEstimate, ServingBudget

GiB = 1024**3
MiB = 1024**2
# Memory in use before the weights load: the CUDA context (plus NCCL at TP=1). vLLM 0.19.0's worker
# snapshot on an H100 reads cuda_memory=0.51GiB at that point (llm-d-incubation/llm-d-planner
# accuracy/results/v0.19.0/logs @ d3121e0, meta-llama-llama-3-1-8b--h100-80gb--tp1pp1dp1--16384.log); the
# same torch/CUDA stack underlies SGLang. NCCL buffers for TP > 1 come on top and are not modelled.
DEFAULT_INIT_OVERHEAD_BYTES = int(0.51 * GiB)


class SglangBudget(BaseModel):
    """SGLang's KV pool sizing on the most constrained GPU. Sizes in bytes."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    engine_version: str
    """The SGLang release modelled (gpuplan.engines.sglang_releases)."""
    release_era: str
    tp: int
    pp: int
    total_gpu_memory: int
    mem_fraction_static: float
    mem_fraction_from_default_rule: bool
    chunked_prefill_size: int
    cuda_graph_max_bs: int
    free_before_weights: int
    weights: int
    free_after_weights: int
    rest_memory: int
    kv_dtype: str
    cell_size: int
    page_size: int
    max_total_num_tokens: int
    k_size: int
    v_size: int
    log_lines: tuple[str, ...]
    state: StatePool | None = None
    """The request-slot pool of Mamba / linear-attention state (models with state layers)."""
    max_running_requests: int | None = None
    """Requests running at once, capped by the state pool (models with state layers)."""


def default_chunk_and_graph(gpu_mem_mb: float, tp: int = 1, *, engine_version: str | None = None) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) SGLang ``engine_version`` picks for a GPU of ``gpu_mem_mb`` MB."""
    return release_chunk_and_graph(sglang_release(engine_version), gpu_mem_mb, tp)


def default_mem_fraction_static(gpu_mem_mb: float, *, tp: int = 1, pp: int = 1,
                                chunked_prefill_size: int | None = None,
                                cuda_graph_max_bs: int | None = None, engine_version: str | None = None,
                                mla: bool = False, multimodal: bool = False) -> float:
    """SGLang ``engine_version``'s default ``mem_fraction_static`` (gpuplan.engines.sglang_releases)."""
    release = sglang_release(engine_version)
    if release.fraction_rule == "tp_table":
        return fraction_tp_table(release, gpu_mem_mb, tp)
    if release.fraction_rule == "gpu_class":
        return fraction_gpu_class(gpu_mem_mb, tp, pp)
    chunk, graph_bs = release_chunk_and_graph(release, gpu_mem_mb, tp)
    chunk = chunked_prefill_size if chunked_prefill_size is not None else chunk
    graph_bs = cuda_graph_max_bs if cuda_graph_max_bs is not None else graph_bs
    return fraction_reserved(release, gpu_mem_mb, tp=tp, pp=pp, chunk=chunk, graph_bs=graph_bs, mla=mla,
                             multimodal=multimodal)


def sglang_cell_size(spec: ModelSpec, kv_heads_per_rank: int, layers: int, kv_bytes: int) -> int:
    """Bytes one token takes in the pool of one GPU (get_cell_size_per_token)."""
    if spec.mla is not None:
        return spec.mla.latent_dim * layers * kv_bytes
    return kv_heads_per_rank * (spec.head_dim + spec.v_head_dim) * layers * kv_bytes


def sglang_budget(
    spec: ModelSpec,
    precision: Precision,
    gpu_memory_bytes: int,
    *,
    tp: int = 1,
    pp: int = 1,
    mem_fraction_static: float | None = None,
    kv_cache_dtype: str | None = None,
    page_size: int = 1,
    device_capacity_bytes: int | None = None,
    chunked_prefill_size: int | None = None,
    cuda_graph_max_bs: int | None = None,
    init_overhead_bytes: int = DEFAULT_INIT_OVERHEAD_BYTES,
    engine_version: str | None = None,
    mamba_ssm_dtype: str | None = None,
    mamba_full_memory_ratio: float | None = None,
    max_mamba_cache_size: int | None = None,
    context_len: int | None = None,
) -> SglangBudget:
    """SGLang's ``max_total_num_tokens`` for ``spec`` on GPUs with ``gpu_memory_bytes`` total (as CUDA
    reports it). ``device_capacity_bytes`` is nvidia-smi's total, which the default-fraction rule reads
    (defaults to ``gpu_memory_bytes``)."""
    refuse_unmodelled_caches(NAME, spec)
    if gpu_memory_bytes <= 0:
        raise InputError("GPU memory must be positive")
    if page_size < 1:
        raise InputError(f"page_size must be at least 1, got {page_size}")
    layout = parallel_layout(spec, precision, tp, pp)
    release = sglang_release(engine_version)
    capacity_mb = (device_capacity_bytes or gpu_memory_bytes) / MiB
    chunk, graph_bs = release_chunk_and_graph(release, capacity_mb, tp)
    chunk = chunked_prefill_size if chunked_prefill_size is not None else chunk
    graph_bs = cuda_graph_max_bs if cuda_graph_max_bs is not None else graph_bs
    from_rule = mem_fraction_static is None
    fraction = (default_mem_fraction_static(capacity_mb, tp=tp, pp=pp, chunked_prefill_size=chunk,
                                            cuda_graph_max_bs=graph_bs, engine_version=release.version,
                                            mla=spec.mla is not None, multimodal=spec.vision_parameters > 0)
                if mem_fraction_static is None else mem_fraction_static)
    if not 0 < fraction < 1:
        raise InputError(f"mem_fraction_static must be between 0 and 1, got {fraction}")

    kv_dtype = engine_kv_dtype(precision, kv_cache_dtype)
    kv_bytes = DTYPE_BYTES[kv_dtype]

    split = pp_layer_split(spec.num_hidden_layers, pp)
    ranges = [(sum(split[:i]), sum(split[:i + 1])) for i in range(pp)]
    ssm_dtype = ssm_dtype_of(spec, mamba_ssm_dtype)
    per_request = state_per_request(spec, tp, SSM_DTYPE_BYTES[ssm_dtype], ranges) if spec.has_state_layers else 0
    free_before = gpu_memory_bytes - init_overhead_bytes
    blocks = weight_blocks(spec, precision, tp, pp)
    results = []
    for stage in range(pp):
        # Free memory drops by the segments the load reserves, not by the tensors' bytes (weight_blocks).
        weights = blocks[stage].reserved
        free_after = free_before - weights
        rest = int(free_after - free_before * (1 - fraction))
        pool = None
        kv_rest = rest
        if spec.has_state_layers:
            # The state pool comes out of rest_memory first (_handle_max_mamba_cache); the full-attention layers'
            # KV pool gets what is left.
            pool = state_pool(spec, rest, per_request, ssm_dtype=ssm_dtype, full_memory_ratio=mamba_full_memory_ratio,
                              max_cache_size=max_mamba_cache_size)
            kv_rest = rest - pool.pool_bytes if pool.slots > 0 else 0
            cell = attention_cell_bytes(spec, layout.kv_heads_per_rank, *ranges[stage], kv_bytes)
        else:
            cell = sglang_cell_size(spec, layout.kv_heads_per_rank, split[stage], kv_bytes)
        tokens = max(0, kv_rest) // cell // page_size * page_size if cell else 0
        results.append((tokens, weights, free_after, rest, cell, pool))
    # Pipeline stages agree on the smallest pool (init_memory_pool all_reduce MIN).
    tokens, weights, free_after, rest, cell, pool = min(results, key=lambda r: r[0])
    running = (max_running_requests(tokens, context_len or spec.max_position_embeddings or tokens or 1, pool)
               if pool is not None else None)
    per_side = cell // 2 if spec.mla is None else cell
    k_size = (tokens + page_size) * per_side
    v_size = (tokens + page_size) * per_side if spec.mla is None else 0
    logs = [f"Load weight end. mem usage={weights / GiB:.2f} GB. avail mem={free_after / GiB:.2f} GB."]
    if pool is not None and pool.slots <= 0:
        logs.append("Not enough GPU memory for hybrid (mamba/linear-attention) state cache. Computed "
                    f"max_mamba_cache_size={pool.slots} (mamba_cache_per_req={pool.per_request / MiB:.2f} MB).")
    elif tokens <= 0:
        logs.append("Not enough memory. Please try to increase --mem-fraction-static. "
                    f"Current value: mem_fraction_static={fraction}")
    elif spec.mla is None:
        if pool is not None:
            conv = (pool.slots + 1) * state_per_request(spec, tp, 0, ranges)
            logs.append(f"Mamba Cache is allocated. max_mamba_cache_size: {pool.slots}, conv_state size: "
                        f"{conv / GiB:.2f}GB, ssm_state size: {(pool.pool_bytes - conv) / GiB:.2f}GB ")
        logs.append(f"KV Cache is allocated. #tokens: {tokens}, K size: {k_size / GiB:.2f} GB, "
                    f"V size: {v_size / GiB:.2f} GB")
        if pool is not None and not running:
            # kv_cache_configurator.py resolve_max_num_reqs raises this at startup.
            logs.append("Hybrid (mamba/linear-attention) state cache is too small to serve any requests. "
                        f"max_mamba_cache_size={pool.slots}, mamba_ratio={pool.slots_per_request}, resulting "
                        f"max_num_reqs={running}.")
    else:
        logs.append(f"KV Cache is allocated. #tokens: {tokens}, KV size: {k_size / GiB:.2f} GB")
    return SglangBudget(
        engine_version=release.version, release_era=release.era, tp=tp, pp=pp, total_gpu_memory=gpu_memory_bytes,
        mem_fraction_static=fraction,
        mem_fraction_from_default_rule=from_rule, chunked_prefill_size=chunk, cuda_graph_max_bs=graph_bs,
        free_before_weights=free_before, weights=weights, free_after_weights=free_after, rest_memory=rest,
        kv_dtype=kv_dtype, cell_size=cell, page_size=page_size, max_total_num_tokens=tokens, k_size=k_size,
        v_size=v_size, log_lines=tuple(logs), state=pool, max_running_requests=running,
    )


# ---- the SGLang engine: options and the estimate behind `--engine sglang` ---------------------------------

NAME = "sglang"
SUMMARY = "SGLang's startup budget: the token pool mem_fraction_static leaves, and how many requests fit"
SERVING = True
# Options of other engines that SGLang spells its own way.
EQUIVALENTS = {"gpu_memory_utilization": "mem_fraction_static"}
# SGLang budgets the whole GPU (mem_fraction_static for weights and KV cache, the rest for activations and CUDA
# graphs): a headroom left free is not something its deployments can ask for.
BUDGETS_WHOLE_GPU = True
# The option that sets the fraction of GPU memory the engine budgets (its log's word for it).
MEMORY_FRACTION_OPTION = "mem_fraction_static"
# SGLang's reserved memory grows with tp x pp (server_args.py, above): another node can leave a GPU less room,
# so fitting on n nodes does not mean fitting on more, and the planner's search keeps its fixed order.
FITS_MORE_WITH_MORE_NODES = False


class Options(EngineOptions):
    """SGLang's flags that decide its memory budget."""

    engine_version: str | None = Field(
        default=None, description="SGLang release whose startup budget is modelled, 0.2.15 to 0.5.23 (default: "
                                  "the sglang installed here, else 0.5.23).", json_schema_extra={"metavar": "X.Y.Z"})
    mem_fraction_static: float | None = Field(
        default=None, gt=0, lt=1, description="fraction for weights + KV cache (default: SGLang's rule by GPU "
                                              "memory).")
    max_model_len: int | None = Field(
        default=None, ge=1, description="context length per request (--context-length; default: --seq, else "
                                        "the model's).", json_schema_extra={"sweep": True, "metavar": "TOKENS"})

    mamba_ssm_dtype: SsmDtype | None = Field(
        default=None, description="dtype of the Mamba / linear-attention temporal state of hybrid models: "
                                  "float32, bfloat16 or float16 (default: the config's mamba_ssm_dtype, else "
                                  "float32).", json_schema_extra={"metavar": "DTYPE"})
    mamba_full_memory_ratio: float | None = Field(
        default=None, gt=0, description="state pool : full-attention KV pool split of hybrid models (default 0.9).")
    max_mamba_cache_size: int | None = Field(
        default=None, ge=1, description="request slots of the state pool of hybrid models (default: from "
                                        "--mamba-full-memory-ratio).")

    _tokens = tokens_validator("max_model_len")


def estimate(model: Any, request: PrecisionRequest, workload: Workload, hardware: Hardware,
             options: Options) -> EngineEstimate:
    """SGLang's pool on ``hardware``; the card is spoken for by design, so activations take exactly the rest."""
    from gpuplan.engines.serving import beyond_context, prepare, serving_estimate

    capacity, precision, length, notes, version = prepare(NAME, model, request, workload, hardware, options)
    spec = model.spec
    _hybrid_notes(spec, options, notes, version)
    s = sglang_budget(spec, precision, capacity, tp=hardware.tensor_parallel, pp=hardware.pipeline_parallel,
                      mem_fraction_static=options.mem_fraction_static, device_capacity_bytes=hardware.device_bytes,
                      engine_version=version, mamba_ssm_dtype=options.mamba_ssm_dtype,
                      mamba_full_memory_ratio=options.mamba_full_memory_ratio,
                      max_mamba_cache_size=options.max_mamba_cache_size, context_len=length)
    tokens = s.max_total_num_tokens
    concurrency = tokens / length
    state_bytes = 0
    if s.state is not None:
        # A hybrid model runs at most max_running_requests at once, however many tokens the KV pool holds.
        concurrency = min(concurrency, s.max_running_requests or 0)
        state_bytes = s.state.pool_bytes
    if s.state is not None and s.state.slots > 0:
        notes.append(f"SGLang state pool: {s.state.slots} request slots of {s.state.per_request / MiB:,.2f} MiB "
                     f"(temporal state in {s.state.ssm_dtype}, conv state in bfloat16), {s.state.slots_per_request} "
                     f"slots per running request: at most {s.max_running_requests} requests run at once")
    serving = ServingBudget(
        engine=NAME, engine_version=s.engine_version, gpu_memory_bytes=capacity,
        memory_fraction=s.mem_fraction_static, kv_cache_tokens=tokens,
        max_model_len=length, max_concurrency=concurrency, fits_one_request=tokens >= length,
        max_model_len_that_fits=tokens, max_num_seqs=s.max_running_requests, log_lines=list(s.log_lines))
    weights, kv_bytes = s.weights, s.k_size + s.v_size + state_bytes
    overhead = s.total_gpu_memory - s.free_before_weights
    # SGLang sizes its KV pool to leave the rest of the GPU, about (1 - mem_fraction_static) of it, for
    # activations and CUDA graphs: the whole card is spoken for by design.
    activation = max(0, capacity - overhead - weights - kv_bytes)
    return serving_estimate(serving, precision, workload, hardware, kv_dtype=s.kv_dtype, weights=weights,
                            kv_bytes=kv_bytes, activation=activation, overhead=overhead, notes=notes,
                            refused=beyond_context(NAME, spec, length) or _state_refusal(s),
                            max_requests=s.max_running_requests)


def _state_refusal(s: SglangBudget) -> str | None:
    """SGLang stops at startup when the state pool cannot hold one running request (resolve_max_num_reqs)."""
    if s.state is None or s.max_running_requests:
        return None
    return (f"SGLang's state pool holds {max(0, s.state.slots)} request slots, fewer than the "
            f"{s.state.slots_per_request} one running request takes: it refuses to start")


def _hybrid_notes(spec: ModelSpec, options: Options, notes: list[str], version: str | None) -> None:
    """What the state pool model leaves out, and flags given to a model that has no state layers."""
    hybrid_flags = [f for f in ("mamba_ssm_dtype", "mamba_full_memory_ratio", "max_mamba_cache_size")
                    if getattr(options, f) is not None]
    if not spec.has_state_layers:
        if hybrid_flags:
            raise InputError(f"--{hybrid_flags[0].replace('_', '-')} applies to models with Mamba / "
                             "linear-attention layers", hint=f"{spec.model_type} has none")
        return
    release = sglang_release(version).version
    if release != STATE_RULES_RELEASE:
        notes.append(f"the state pool follows SGLang {STATE_RULES_RELEASE}'s rules; those of {release} were not read")
    if spec.model_type not in SGLANG_STATE_MODEL_TYPES:
        notes.append(f"SGLang 0.5.23 has no implementation of {spec.model_type}: its pools are sized as SGLang "
                     "sizes other hybrid models")


_SGLANG_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def launch_command(model: str, result: Any, *, nodes: int, dtype: str | None, kv_cache_dtype: str | None,
                   options: Options, expert_parallel: bool = False, quantization: str | None = None) -> list[str]:
    """`python -m sglang.launch_server` for a planned deployment, with every setting that was planned spelled
    out; on several nodes, one per node. Flags: python/sglang/srt/server_args.py (--tp, --pp-size,
    --context-length, --dtype, --quantization, --load-format, --kv-cache-dtype fp8_e4m3, --mem-fraction-static,
    --ep-size)."""
    tp, pp = result.tensor_parallel, result.pipeline_parallel
    cmd = f"python -m sglang.launch_server --model-path {model} --tp {tp}"
    if pp > 1:
        cmd += f" --pp-size {pp}"
    cmd += f" --context-length {result.seq}"
    if dtype in _SGLANG_DTYPES:
        cmd += f" --dtype {_SGLANG_DTYPES[dtype]}"
    if quantization == "bitsandbytes":
        cmd += " --load-format bitsandbytes"  # SGLang's in-flight 4-bit load (server_args.py load_format)
    elif quantization in ("fp8",):
        cmd += f" --quantization {quantization}"
    # A pre-quantized checkpoint (awq, gptq) carries its method in its config, which SGLang reads; its docs
    # (advanced_features/quantization) say not to add --quantization then.
    if kv_cache_dtype == "fp8":
        cmd += " --kv-cache-dtype fp8_e4m3"
    if options.mem_fraction_static is not None:
        cmd += f" --mem-fraction-static {options.mem_fraction_static:g}"
    if expert_parallel:
        cmd += f" --ep-size {tp}"
    # Hybrid models' state pool (server_args: --mamba-ssm-dtype, --mamba-full-memory-ratio, --max-mamba-cache-size).
    for field in ("mamba_ssm_dtype", "mamba_full_memory_ratio", "max_mamba_cache_size"):
        value = getattr(options, field)
        if value is not None:
            cmd += f" --{field.replace('_', '-')} {value:g}" if isinstance(value, float) else \
                f" --{field.replace('_', '-')} {value}"
    if nodes == 1:
        return [cmd]
    # SGLang multi-node: every node runs the same command with its rank (docs: "Multi-node deployment").
    return [f"{cmd} --nnodes {nodes} --node-rank <0..{nodes - 1}> --dist-init-addr <head-node-ip>:5000"]
