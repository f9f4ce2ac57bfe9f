"""The library facade: what the CLI, the tests and users' scripts call.

>>> import gpuplan
>>> r = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", seq=4096)
>>> r.kv_cache_bytes
2147483648
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from gpuplan.calc.estimate import estimate_memory, estimate_memory_split
from gpuplan.calc.precision import Precision, resolve_precision
from gpuplan.calc.weights import checkpoint_bytes, unloaded_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.transformers import ATTN_IMPLS
from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel, SourceName, resolve_model
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EstimateResult, GpuMemory, LlamaCppRun, ServingBudget

ENGINES: tuple[str, ...] = ("transformers", "vllm", "sglang", "llama.cpp")
SERVING_ENGINES = ("vllm", "sglang")
LLAMACPP = "llama.cpp"
# estimate()'s llama.cpp keywords with llama.cpp's own defaults (common/common.h: n_batch 2048, n_ubatch
# 512; llama-cli decodes one sequence): any other value with another engine is a mistake worth naming.
LLAMACPP_DEFAULTS: dict[str, Any] = {
    "n_gpu_layers": None, "ctx_size": None, "ubatch_size": 512, "batch_size": 2048, "parallel": 1,
    "kv_unified": False, "cache_type_k": "f16", "cache_type_v": "f16", "flash_attn": "auto",
    "swa_full": False, "kv_offload": True, "op_offload": True,
}


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


def _as_resolved(model: Any, *, revision: str | None, source: SourceName,
                 offline: bool | None) -> ResolvedModel:
    if isinstance(model, str):
        return resolve_model(model, revision=revision, source=source, offline=offline)
    if isinstance(model, ModelSpec):
        return ResolvedModel(id=model.model_type, source="local", spec=model)
    if isinstance(model, ResolvedModel):
        return model
    from gpuplan.models.gguf import GgufModel

    if isinstance(model, GgufModel):
        return ResolvedModel(id=model.path, source="local", spec=model.spec, location=model.files[0].path,
                             gguf=model)
    raise InputError(f"cannot estimate a {type(model).__name__}",
                     hint="pass a model name or path, a ResolvedModel, a ModelSpec or a GgufModel")


def _gguf_of(resolved: ResolvedModel) -> Any:
    """The GgufModel behind a resolved model, re-read from its file when only the path was kept."""
    if resolved.gguf is not None:
        return resolved.gguf
    if resolved.source == "local" and resolved.location and resolved.location.lower().endswith(".gguf"):
        from gpuplan.models.gguf import load_gguf_model

        return load_gguf_model(resolved.location)
    return None


def resolve_gpu(gpu: Any = None, gpu_memory: str | int | None = None):
    """A GpuSpec from a catalog name (or a GpuSpec), optionally with its memory overridden; None if neither."""
    if gpu is None and gpu_memory is None:
        return None  # the GPU catalog is loaded only when a GPU is named
    from gpuplan.gpus.catalog import GpuSpec, custom_gpu, load_catalog

    base = None
    if isinstance(gpu, GpuSpec):
        base = gpu
    elif gpu is not None:
        base = load_catalog().resolve(str(gpu))
    if gpu_memory is not None:
        return custom_gpu(base.name if base else "custom", gpu_memory, base=base)
    return base


def _expandable_segments_from_env() -> bool:
    """PyTorch's allocator grows segments in place when PYTORCH_CUDA_ALLOC_CONF says expandable_segments:True."""
    return "expandable_segments:true" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").lower()


def estimate(model: str | ResolvedModel | ModelSpec | Any, *, dtype: str = "auto", kv_dtype: str = "auto",
             batch: int = 1, seq: int | None = None, new_tokens: int = 0, engine: str | None = None,
             attn: str = "sdpa", gpu: Any = None, gpu_memory: str | int | None = None,
             tensor_parallel: int = 1, pipeline_parallel: int = 1,
             gpu_memory_utilization: float | None = None, max_model_len: int | None = None,
             max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None, block_size: int = 16,
             kv_cache_memory: str | int | None = None, mem_fraction_static: float | None = None,
             n_gpu_layers: int | str | None = None, ctx_size: int | None = None, ubatch_size: int = 512,
             batch_size: int = 2048, parallel: int | str = 1, kv_unified: bool = False,
             cache_type_k: str = "f16", cache_type_v: str = "f16", flash_attn: str = "auto",
             swa_full: bool = False, kv_offload: bool = True, op_offload: bool = True,
             revision: str | None = None, source: SourceName = "auto",
             offline: bool | None = None, expandable_segments: bool | None = None) -> EstimateResult:
    """Estimate per-GPU memory for one workload.

    ``expandable_segments`` (transformers engine): whether PyTorch's allocator grows segments in place
    (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True); None reads that variable in this process.

    ``engine="transformers"`` models Hugging Face ``generate()`` of ``batch`` sequences of ``seq`` tokens.
    ``engine="vllm"`` / ``"sglang"`` model the serving engine's startup budget on ``gpu`` (a catalog name)
    or ``gpu_memory`` (e.g. "79.2GiB"): the KV cache it allocates and how many requests of
    ``max_model_len`` tokens fit. ``engine="llama.cpp"`` models llama.cpp's buffers for a GGUF file, with
    its flags as keywords: ``n_gpu_layers`` (-ngl; None or "all": every layer), ``ctx_size`` (-c; None:
    ``seq``, else the model's context), ``ubatch_size`` (-ub), ``batch_size`` (-b), ``parallel`` (-np; an
    int or "auto"), ``kv_unified``, ``cache_type_k`` / ``cache_type_v`` (-ctk / -ctv), ``flash_attn``
    (auto | on | off), ``swa_full``, ``kv_offload`` (False: --no-kv-offload), ``op_offload`` (False:
    --no-op-offload). ``engine=None`` picks llama.cpp for a GGUF model and transformers otherwise.
    """
    resolved = _as_resolved(model, revision=revision, source=source, offline=offline)
    if engine is None:
        engine = LLAMACPP if resolved.gguf is not None else "transformers"
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
    llama_args = {"n_gpu_layers": n_gpu_layers, "ctx_size": ctx_size, "ubatch_size": ubatch_size,
                  "batch_size": batch_size, "parallel": parallel, "kv_unified": kv_unified,
                  "cache_type_k": cache_type_k, "cache_type_v": cache_type_v, "flash_attn": flash_attn,
                  "swa_full": swa_full, "kv_offload": kv_offload, "op_offload": op_offload}
    if engine == LLAMACPP:
        return _llamacpp_estimate(resolved, dtype=dtype, kv_dtype=kv_dtype, batch=batch, seq=seq, attn=attn,
                                  gpu_spec=resolve_gpu(gpu, gpu_memory), tp=tensor_parallel,
                                  pp=pipeline_parallel, **llama_args)
    changed = [k for k, v in llama_args.items() if v != LLAMACPP_DEFAULTS[k]]
    if changed:
        verb = "applies" if len(changed) == 1 else "apply"
        raise InputError(f"{', '.join(changed)} {verb} to the llama.cpp engine only, not {engine}",
                         hint="use engine='llama.cpp' with a GGUF model")
    if attn not in ATTN_IMPLS:
        raise InputError(f"unknown attention implementation {attn!r}", hint=f"use one of: {', '.join(ATTN_IMPLS)}")
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    spec = resolved.spec
    precision = resolve_precision(spec, dtype, kv_dtype)
    gpu_spec = resolve_gpu(gpu, gpu_memory)
    notes = list(resolved.notices) + list(spec.notes)
    if resolved.gguf is not None:
        notes.append(f"a GGUF file under --engine {engine}: its weights are counted as {precision.weights}, "
                     "dequantized; --engine llama.cpp counts them as stored")
    if engine in SERVING_ENGINES:
        return _serving_estimate(resolved, precision, engine, gpu_spec, notes, batch=batch, seq=seq,
                                 tp=tensor_parallel, pp=pipeline_parallel,
                                 gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                 max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                                 block_size=block_size, kv_cache_memory=kv_cache_memory,
                                 mem_fraction_static=mem_fraction_static)
    if tensor_parallel != 1:
        raise InputError("transformers does not shard layers over GPUs (no tensor parallelism in generate())",
                         hint="use --pipeline-parallel-size N to spread whole layers over N GPUs as "
                              "device_map='auto' does, or --engine vllm / sglang for tensor parallel serving")
    workload = make_workload(batch, seq if seq is not None else 2048, new_tokens)
    weights_override = None
    if resolved.safetensors_parameters and dtype == "auto":
        stored = checkpoint_bytes(resolved.safetensors_parameters)
        if stored is not None:
            weights_override = stored - unloaded_bytes(spec, precision)
            notes.append("weights: exact stored bytes from the checkpoint's safetensors headers")
    if expandable_segments is None:
        expandable_segments = _expandable_segments_from_env()
    per_gpu = None
    if pipeline_parallel > 1:
        shares = estimate_memory_split(spec, workload, precision, pipeline_parallel, attn=attn,  # type: ignore[arg-type]
                                       capacity_bytes=gpu_spec.usable_bytes if gpu_spec is not None else None,
                                       expandable_segments=expandable_segments)
        per_gpu = [GpuMemory(index=i, first_layer=b.components["first_layer"] if "first_layer" in b.components
                             else 0, layers=b.components.get("layers", 0), weights_bytes=b.weights_bytes,
                             kv_cache_bytes=b.kv_cache_bytes, activation_bytes=b.activation_bytes,
                             peak_allocated_bytes=b.peak_allocated_bytes, total_bytes=b.total_bytes)
                   for i, b in enumerate(shares)]
        breakdown = max(shares, key=lambda b: b.total_bytes)
        notes.append(f"spread over {pipeline_parallel} GPUs as device_map='auto' places whole layers "
                     "(transformers' balanced split); figures are the most loaded GPU's, per_gpu has each one")
    else:
        breakdown = estimate_memory(spec, workload, precision, attn=attn,  # type: ignore[arg-type]
                                    weights_override=weights_override, expandable_segments=expandable_segments)
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
        components=breakdown.components, notes=notes, warnings=warnings, per_gpu=per_gpu,
        gpus=pipeline_parallel, pipeline_parallel=pipeline_parallel, **fit,
    )


def _llamacpp_estimate(resolved: ResolvedModel, *, dtype: str, kv_dtype: str, batch: int, seq: int | None,
                       attn: str, gpu_spec: Any, tp: int, pp: int, n_gpu_layers: int | str | None,
                       ctx_size: int | None, ubatch_size: int, batch_size: int, parallel: int | str,
                       kv_unified: bool, cache_type_k: str, cache_type_v: str, flash_attn: str, swa_full: bool,
                       kv_offload: bool, op_offload: bool) -> EstimateResult:
    from gpuplan.engines.llamacpp import LlamaCppSettings, estimate_llamacpp

    gguf = _gguf_of(resolved)
    if gguf is None:
        raise InputError("--engine llama.cpp reads a .gguf file",
                         hint="pass the path of a GGUF model (llama.cpp's convert_hf_to_gguf.py writes one)")
    if dtype != "auto":
        raise InputError(f"--dtype {dtype}: llama.cpp runs the GGUF file's own types",
                         hint="quantize the file with llama-quantize, or leave --dtype at auto")
    if kv_dtype != "auto":
        raise InputError(f"--kv-dtype {kv_dtype}: llama.cpp sets its cache types with --cache-type-k/-v",
                         hint="for example -ctk q8_0 -ctv q8_0")
    if attn != "sdpa":
        raise InputError("--attn is the transformers engine's; llama.cpp takes --flash-attn auto|on|off")
    if tp * pp != 1:
        raise InputError("the llama.cpp engine is estimated on one GPU",
                         hint="its split over several GPUs (--tensor-split) is not modelled")
    if batch != 1:
        raise InputError(f"batch {batch}: llama.cpp decodes --parallel sequences at once",
                         hint="give --parallel (-np) instead of --batch")
    ngl = _gpu_layers(n_gpu_layers)
    if isinstance(parallel, str):
        if parallel.strip().lower() != "auto":
            raise InputError(f"--parallel expects a number or auto, got {parallel!r}")
        n_parallel: int | None = None
    else:
        n_parallel = parallel
    cache_type_k, cache_type_v = cache_type_k.strip().lower(), cache_type_v.strip().lower()
    flash_attn = flash_attn.strip().lower()
    if flash_attn not in ("auto", "on", "off"):
        raise InputError(f"--flash-attn expects auto, on or off, got {flash_attn!r}")
    try:
        settings = LlamaCppSettings(
            n_gpu_layers=ngl, ctx_size=ctx_size if ctx_size is not None else seq, n_batch=batch_size,
            n_ubatch=ubatch_size, parallel=n_parallel, kv_unified=kv_unified, cache_type_k=cache_type_k,
            cache_type_v=cache_type_v, flash_attn=flash_attn, swa_full=swa_full, kv_offload=kv_offload,
            op_offload=op_offload)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = {"n_batch": "--batch-size", "n_ubatch": "--ubatch-size", "ctx_size": "--ctx-size",
                 "parallel": "--parallel"}.get(str(err["loc"][0]), str(err["loc"][0]))
        raise InputError(f"{field}: {err['msg']}, got {err['input']!r}") from None
    mem = estimate_llamacpp(gguf, settings)
    spec = gguf.spec
    notes = list(resolved.notices) + list(spec.notes) + list(mem.notes)
    layers_total = spec.num_hidden_layers
    if mem.host_weights_bytes and (mem.layers_on_gpu < layers_total or not mem.output_on_gpu):
        notes.append("host weights are read from the memory-mapped file (llama.cpp's default --mmap): they "
                     "use page cache rather than allocated RAM")
    peak = mem.gpu_weights_bytes + mem.gpu_kv_bytes + mem.gpu_compute_bytes
    total = mem.gpu_total_bytes
    fit: dict[str, Any] = {}
    if gpu_spec is not None:
        capacity = gpu_spec.usable_bytes
        fit = {"gpu": gpu_spec.name, "gpu_memory_bytes": capacity, "fits": total <= capacity,
               "headroom_bytes": capacity - total}
    kv_type = cache_type_k if cache_type_k == cache_type_v else f"{cache_type_k}/{cache_type_v}"
    by_type = gguf.bytes_by_type()
    run = LlamaCppRun(
        file=gguf.files[0].path, file_type=gguf.file_type, n_gpu_layers=ngl,
        layers=layers_total, layers_on_gpu=mem.layers_on_gpu, output_on_gpu=mem.output_on_gpu,
        n_ctx=mem.n_ctx, n_ctx_seq=mem.n_ctx_seq, n_seq=mem.n_seq, kv_unified=mem.kv_unified,
        n_ubatch=mem.n_ubatch, flash_attn=mem.flash_attn, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
        kv_offload=kv_offload, kv_cells_swa=mem.kv_cells_swa, host_bytes=mem.host_total_bytes,
        host_weights_bytes=mem.host_weights_bytes, host_kv_bytes=mem.host_kv_bytes,
        host_compute_bytes=mem.host_compute_bytes, host_output_bytes=mem.host_output_bytes)
    return EstimateResult(
        model=resolved.id, source=resolved.source, revision=resolved.revision, commit=resolved.commit,
        model_type=spec.model_type, attention=spec.attention_kind, engine=LLAMACPP,
        attn_implementation="flash_attn" if mem.flash_attn else "no_flash_attn",
        # ggml keeps activations in f32 between ops (engines/llamacpp.py counts the compute buffer so).
        dtype=gguf.file_type or next(iter(by_type), "unknown"), compute_dtype="fp32", kv_dtype=kv_type,
        batch=mem.n_seq, seq=mem.n_ctx_seq, prompt_tokens=mem.n_ctx_seq, new_tokens=0,
        parameters=spec.parameters, loaded_parameters=spec.loaded_parameters,
        weights_bytes=mem.gpu_weights_bytes, kv_cache_bytes=mem.gpu_kv_bytes,
        activation_bytes=mem.gpu_compute_bytes, overhead_bytes=mem.runtime_bytes,
        peak_allocated_bytes=peak, total_bytes=total,
        components=dict(mem.components),
        llamacpp=run, notes=notes, **fit,
    )


def _gpu_layers(value: int | str | None) -> int | None:
    """-ngl as llama.cpp reads it: a number (negative: all), or all; None when every layer goes."""
    if value is None or isinstance(value, int):
        return None if value is not None and value < 0 else value
    text = value.strip().lower()
    if text == "all":
        return None
    try:
        number = int(text)
    except ValueError:
        hint = "give a number of layers or all"
        if text == "auto":
            hint += " (llama.cpp's --fit, which picks -ngl from free memory, is not modelled)"
        raise InputError(f"--n-gpu-layers expects a number or all, got {value!r}", hint=hint) from None
    return None if number < 0 else number


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
        # SGLang sizes its KV pool to leave the rest of the GPU, about (1 - mem_fraction_static) of it, for
        # activations and CUDA graphs: the whole card is spoken for by design.
        activation = max(0, capacity - overhead - weights - kv_bytes)
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


def train(model: str | ResolvedModel | ModelSpec | Any, *, method: str = "full", precision: str = "bf16",
          optimizer: str = "adamw", lora_rank: int | None = None, lora_targets: list[str] | str | None = None,
          grad_checkpointing: bool | None = None, batch: int = 1, seq: int = 2048, grad_accumulation: int = 1,
          zero: int = 0, fsdp: bool = False, gpus: int = 1, offload_optimizer: bool = False,
          prepare_kbit: bool = False, gpu: Any = None, gpu_memory: str | int | None = None,
          revision: str | None = None, source: SourceName = "auto", offline: bool | None = None,
          expandable_segments: bool | None = None) -> Any:
    """Memory of one training step of a causal LM with transformers (+ peft for LoRA / QLoRA), per GPU.

    ``method``: full | lora | qlora. ``precision``: bf16 | fp16 | fp32 | mixed (fp32 master weights with bf16
    autocast). ``optimizer``: adamw | adamw-8bit | adafactor | sgd | sgd-momentum. ``lora_targets``: module
    names (q_proj, v_proj ...) or None for every linear projection of the blocks (peft "all-linear").
    ``batch`` is the micro-batch per GPU; ``zero`` (DeepSpeed stage) or ``fsdp`` shard over ``gpus``.
    ``prepare_kbit``: the QLoRA base goes through peft's prepare_model_for_kbit_training (float32 embeddings,
    norms and lm_head, so float32 activations), as QLoRA scripts and TRL do. ``grad_checkpointing`` None
    follows that function's default: on with ``prepare_kbit``, off otherwise.
    Returns a :class:`gpuplan.results.TrainResult`; docs/training.md has the formulas.
    """
    from gpuplan.calc.overhead import NON_TORCH_BYTES
    from gpuplan.calc.training import METHODS, OPTIMIZERS, PRECISIONS, TrainingSetup, estimate_training
    from gpuplan.results import TrainResult

    for name, value, allowed in (("method", method, METHODS), ("precision", precision, PRECISIONS),
                                 ("optimizer", optimizer, OPTIMIZERS)):
        if value not in allowed:
            raise InputError(f"unknown --{name} {value!r}", hint=f"use one of: {', '.join(allowed)}")
    if method == "full" and (lora_rank is not None or lora_targets):
        raise InputError("--lora-rank and --lora-targets apply to --method lora or qlora")
    targets: tuple[str, ...] | None = None
    if lora_targets:
        items = lora_targets.split(",") if isinstance(lora_targets, str) else list(lora_targets)
        cleaned = tuple(t.strip() for t in items if t.strip())
        if cleaned and cleaned != ("all-linear",):
            targets = cleaned
    resolved = _as_resolved(model, revision=revision, source=source, offline=offline)
    if resolved.gguf is not None:
        raise InputError("gpuplan train models Hugging Face checkpoints, not GGUF files",
                         hint="pass the model's Hugging Face id or config.json")
    spec = resolved.spec
    try:
        setup = TrainingSetup(method=method, precision=precision, optimizer=optimizer,  # type: ignore[arg-type]
                              lora_rank=16 if lora_rank is None else lora_rank, lora_targets=targets,
                              grad_checkpointing=grad_checkpointing, batch=batch, seq=seq,
                              grad_accumulation=grad_accumulation, zero=zero, fsdp=fsdp, gpus=gpus,
                              offload_optimizer=offload_optimizer, prepare_kbit=prepare_kbit)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    mem = estimate_training(spec, setup)
    if expandable_segments is None:
        expandable_segments = _expandable_segments_from_env()
    slack = 0 if expandable_segments else mem.largest_transient_bytes
    overhead = NON_TORCH_BYTES + slack
    total = mem.peak_allocated_bytes + overhead
    warnings: list[str] = []
    if spec.max_position_embeddings and seq > spec.max_position_embeddings:
        warnings.append(f"seq {seq} exceeds the model's context length of {spec.max_position_embeddings} tokens")
    notes = list(resolved.notices) + list(mem.notes)
    if spec.moe is not None:
        notes.append("mixture-of-experts: activations are modelled as for the dense layers; expert routing "
                     "buffers are not measured")
    gpu_spec = resolve_gpu(gpu, gpu_memory)
    fit: dict[str, Any] = {}
    if gpu_spec is not None:
        capacity = gpu_spec.usable_bytes
        fit = {"gpu": gpu_spec.name, "gpu_memory_bytes": capacity, "fits": total <= capacity,
               "headroom_bytes": capacity - total}
    return TrainResult(
        model=resolved.id, source=resolved.source, revision=resolved.revision, commit=resolved.commit,
        model_type=spec.model_type, method=method, precision=precision, optimizer=optimizer,
        lora_rank=setup.lora_rank if method != "full" else None,
        lora_targets=list(targets) if targets is not None else None, grad_checkpointing=setup.grad_checkpointing,
        batch=batch, seq=seq, grad_accumulation=grad_accumulation, zero=zero, fsdp=fsdp, gpus=gpus,
        offload_optimizer=offload_optimizer, prepare_kbit=prepare_kbit, parameters=spec.loaded_parameters,
        trainable_parameters=mem.trainable_parameters, weights_bytes=mem.weights_bytes,
        gradient_bytes=mem.gradient_bytes, optimizer_bytes=mem.optimizer_bytes,
        activation_bytes=mem.activation_bytes, step_temporary_bytes=mem.step_temporary_bytes,
        forward_peak_bytes=mem.forward_peak_bytes, backward_peak_bytes=mem.backward_peak_bytes,
        step_peak_bytes=mem.step_peak_bytes, peak_phase=mem.peak_phase,
        peak_allocated_bytes=mem.peak_allocated_bytes, overhead_bytes=overhead, total_bytes=total,
        components={**mem.components, "allocator_slack": slack, "non_torch": NON_TORCH_BYTES},
        notes=notes, warnings=warnings, **fit)
