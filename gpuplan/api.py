"""The library facade: what the CLI, the tests and users' scripts call.

>>> import gpuplan
>>> r = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", seq=4096)
>>> r.kv_cache_bytes
2147483648
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gpuplan.calc.estimate import estimate_memory
from gpuplan.calc.precision import Precision, resolve_precision
from gpuplan.calc.weights import checkpoint_bytes, unloaded_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.transformers import ATTN_IMPLS
from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel, SourceName, resolve_model
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EstimateResult, ServingBudget

ENGINES: tuple[str, ...] = ("transformers", "vllm", "sglang")
SERVING_ENGINES = ("vllm", "sglang")


def load_model(model: str, *, revision: str | None = None, source: SourceName = "auto",
               offline: bool | None = None) -> ResolvedModel:
    """Locate and parse a model: a path, a bundled id or alias, or a Hugging Face Hub id."""
    return resolve_model(model, revision=revision, source=source, offline=offline)


def make_workload(batch: int, seq: int, new_tokens: int) -> Workload:
    try:
        return Workload(batch=batch, seq=seq, new_tokens=new_tokens)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        ctx = err.get("ctx", {})
        if err["type"] == "less_than_equal":
            raise InputError(f"{field} {err['input']:,} is beyond what gpuplan accepts ({ctx['le']:,})",
                             hint="check for a typo such as an extra zero") from None
        if err["type"] == "greater_than_equal":
            raise InputError(f"{field} must be at least {ctx['ge']}, got {err['input']}") from None
        raise InputError(err["msg"].removeprefix("Value error, ")) from None


def _as_resolved(model: str | ResolvedModel | ModelSpec, *, revision: str | None, source: SourceName,
                 offline: bool | None) -> ResolvedModel:
    if isinstance(model, str):
        return resolve_model(model, revision=revision, source=source, offline=offline)
    if isinstance(model, ModelSpec):
        return ResolvedModel(id=model.model_type, source="local", spec=model)
    return model


def resolve_gpu(gpu: Any = None, gpu_memory: str | int | None = None):
    """A GpuSpec from a catalog name (or a GpuSpec), optionally with its memory overridden; None if neither."""
    from gpuplan.gpus.catalog import GpuSpec, custom_gpu, load_catalog

    base = None
    if isinstance(gpu, GpuSpec):
        base = gpu
    elif gpu is not None:
        base = load_catalog().resolve(str(gpu))
    if gpu_memory is not None:
        return custom_gpu(base.name if base else "custom", gpu_memory, base=base)
    return base


def estimate(model: str | ResolvedModel | ModelSpec, *, dtype: str = "auto", kv_dtype: str = "auto",
             batch: int = 1, seq: int | None = None, new_tokens: int = 1, engine: str = "transformers",
             attn: str = "sdpa", gpu: Any = None, gpu_memory: str | int | None = None,
             tensor_parallel: int = 1, pipeline_parallel: int = 1,
             gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
             max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None, block_size: int = 16,
             kv_cache_memory: str | int | None = None, mem_fraction_static: float | None = None,
             revision: str | None = None, source: SourceName = "auto",
             offline: bool | None = None) -> EstimateResult:
    """Estimate per-GPU memory for one workload.

    ``engine="transformers"`` (the default) models Hugging Face ``generate()`` of ``batch`` sequences of
    ``seq`` tokens. ``engine="vllm"`` / ``"sglang"`` model the serving engine's startup budget on ``gpu``
    (a catalog name) or ``gpu_memory`` (e.g. "79.2GiB"): the KV cache it allocates and how many requests of
    ``max_model_len`` tokens fit.
    """
    resolved = _as_resolved(model, revision=revision, source=source, offline=offline)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
    if attn not in ATTN_IMPLS:
        raise InputError(f"unknown attention implementation {attn!r}", hint=f"use one of: {', '.join(ATTN_IMPLS)}")
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    spec = resolved.spec
    precision = resolve_precision(spec, dtype, kv_dtype)
    gpu_spec = resolve_gpu(gpu, gpu_memory)
    notes = list(resolved.notices) + list(spec.notes)
    if engine in SERVING_ENGINES:
        return _serving_estimate(resolved, precision, engine, gpu_spec, notes, batch=batch, seq=seq,
                                 tp=tensor_parallel, pp=pipeline_parallel,
                                 gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                 max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                 block_size=block_size, kv_cache_memory=kv_cache_memory,
                                 mem_fraction_static=mem_fraction_static)
    if tensor_parallel * pipeline_parallel != 1:
        raise InputError("the transformers engine is estimated on one GPU",
                         hint="use --engine vllm or sglang for tensor / pipeline parallel serving")
    workload = make_workload(batch, seq if seq is not None else 2048, new_tokens)
    weights_override = None
    if resolved.safetensors_parameters and dtype == "auto":
        stored = checkpoint_bytes(resolved.safetensors_parameters)
        if stored is not None:
            weights_override = stored - unloaded_bytes(spec, precision)
            notes.append("weights: exact stored bytes from the checkpoint's safetensors headers")
    breakdown = estimate_memory(spec, workload, precision, attn=attn,  # type: ignore[arg-type]
                                weights_override=weights_override)
    warnings: list[str] = []
    if spec.max_position_embeddings and workload.seq > spec.max_position_embeddings:
        warnings.append(f"seq {workload.seq} exceeds the model's context length of "
                        f"{spec.max_position_embeddings} tokens")
    fit: dict[str, Any] = {}
    if gpu_spec is not None:
        capacity = gpu_spec.usable_bytes
        fit = {"gpu": gpu_spec.name, "gpu_memory_bytes": capacity, "fits": breakdown.total_bytes <= capacity,
               "headroom_bytes": capacity - breakdown.total_bytes}
    return EstimateResult(
        **_common(resolved, precision, engine, attn),
        batch=workload.batch, seq=workload.seq, prompt_tokens=workload.prompt_tokens,
        new_tokens=workload.new_tokens,
        weights_bytes=breakdown.weights_bytes, kv_cache_bytes=breakdown.kv_cache_bytes,
        activation_bytes=breakdown.activation_bytes, overhead_bytes=breakdown.overhead_bytes,
        peak_allocated_bytes=breakdown.peak_allocated_bytes, total_bytes=breakdown.total_bytes,
        components=breakdown.components, notes=notes, warnings=warnings, **fit,
    )


def _common(resolved: ResolvedModel, precision: Precision, engine: str, attn: str) -> dict[str, Any]:
    spec = resolved.spec
    return {
        "model": resolved.id, "source": resolved.source, "revision": resolved.revision, "commit": resolved.commit,
        "model_type": spec.model_type, "attention": spec.attention_kind, "engine": engine,
        "attn_implementation": attn if engine == "transformers" else engine,
        "dtype": precision.weights, "compute_dtype": precision.compute_dtype, "kv_dtype": precision.kv_dtype,
        "parameters": spec.parameters, "loaded_parameters": spec.loaded_parameters,
    }


def _serving_estimate(resolved: ResolvedModel, precision: Precision, engine: str, gpu_spec: Any,
                      notes: list[str], *, batch: int, seq: int | None, tp: int, pp: int,
                      gpu_memory_utilization: float | None, max_model_len: int | None,
                      max_num_seqs: int | None, max_num_batched_tokens: int | None, block_size: int,
                      kv_cache_memory: str | int | None, mem_fraction_static: float | None) -> EstimateResult:
    from gpuplan.units import parse_size

    if gpu_spec is None:
        raise InputError(f"--engine {engine} sizes its KV cache from the GPU's memory",
                         hint="name the GPU with --gpu (see `gpuplan gpus`) or give --gpu-memory 79.2GiB")
    spec = resolved.spec
    model_len = max_model_len or seq or spec.max_position_embeddings
    if model_len is None:
        raise InputError("the model's config gives no context length", hint="pass --max-model-len")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    if gpu_spec.cuda_total_bytes is None:
        notes.append(f"{gpu_spec.name}: no CUDA-reported total is known, so the driver total is used; CUDA "
                     "usually sees a few hundred MiB less")
    capacity = gpu_spec.usable_bytes
    kv_memory = parse_size(kv_cache_memory) if isinstance(kv_cache_memory, str) else kv_cache_memory
    warnings: list[str] = []
    if engine == "vllm":
        from gpuplan.engines.vllm import DEFAULT_GPU_MEMORY_UTILIZATION, vllm_budget

        utilization = DEFAULT_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
        b = vllm_budget(spec, precision, capacity, tp=tp, pp=pp, gpu_memory_utilization=utilization,
                        max_model_len=model_len, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
                        kv_cache_memory=kv_memory, gpu_name=gpu_spec.name)
        kv_pool = max(0, b.num_blocks) * b.page_size_per_layer * b.group_size
        overhead = b.non_torch + (b.cuda_graph or 0)
        serving = ServingBudget(
            engine="vllm", gpu_memory_bytes=capacity, memory_fraction=utilization, kv_cache_tokens=b.kv_cache_tokens,
            max_model_len=b.max_model_len, max_concurrency=b.max_concurrency, fits_one_request=b.fits_one_request,
            max_model_len_that_fits=b.max_model_len_that_fits, num_blocks=b.num_blocks,
            max_num_seqs=b.max_num_seqs, max_num_batched_tokens=b.max_num_batched_tokens,
            log_lines=list(b.log_lines))
        weights, activation, kv_bytes = b.weights, b.activation_peak, kv_pool
        kv_dtype = b.kv_dtype
    else:
        from gpuplan.engines.sglang import sglang_budget

        if gpu_memory_utilization is not None:
            raise InputError("--gpu-memory-utilization is vLLM's; SGLang takes --mem-fraction-static")
        s = sglang_budget(spec, precision, capacity, tp=tp, pp=pp, mem_fraction_static=mem_fraction_static,
                          device_capacity_bytes=gpu_spec.memory_bytes)
        tokens = s.max_total_num_tokens
        serving = ServingBudget(
            engine="sglang", gpu_memory_bytes=capacity, memory_fraction=s.mem_fraction_static, kv_cache_tokens=tokens,
            max_model_len=model_len, max_concurrency=tokens / model_len, fits_one_request=tokens >= model_len,
            max_model_len_that_fits=tokens, log_lines=list(s.log_lines))
        weights, kv_bytes, kv_dtype = s.weights, s.k_size + s.v_size, s.kv_dtype
        overhead = s.total_gpu_memory - s.free_before_weights
        # SGLang keeps (1 - mem_fraction_static) of the memory for activations and CUDA graphs.
        activation = max(0, int(s.free_before_weights * (1 - s.mem_fraction_static)))
    peak = weights + kv_bytes + activation
    total = peak + overhead
    fits = serving.fits_one_request and serving.kv_cache_tokens >= batch * model_len if batch > 1 \
        else serving.fits_one_request
    if not serving.fits_one_request:
        warnings.append(f"one request of {model_len:,} tokens does not fit; the longest that fits is "
                        f"{serving.max_model_len_that_fits:,}")
    elif batch > 1 and not fits:
        warnings.append(f"{batch} concurrent requests of {model_len:,} tokens do not fit: "
                        f"{serving.max_concurrency:.2f}x do")
    common = _common(resolved, precision, engine, engine)
    common["kv_dtype"] = kv_dtype
    return EstimateResult(
        **common, batch=batch, seq=model_len, prompt_tokens=model_len, new_tokens=0,
        gpus=tp * pp, tensor_parallel=tp, pipeline_parallel=pp, gpu=gpu_spec.name, gpu_memory_bytes=capacity,
        fits=fits, headroom_bytes=capacity - total,
        weights_bytes=weights, kv_cache_bytes=kv_bytes, activation_bytes=activation, overhead_bytes=overhead,
        peak_allocated_bytes=peak, total_bytes=total, serving=serving, notes=notes, warnings=warnings,
    )
