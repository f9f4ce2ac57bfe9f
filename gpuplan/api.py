"""The library facade: what the CLI, the web server, the tests and users' scripts call.

>>> import gpuplan
>>> r = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", seq=4096)
>>> r.kv_cache_bytes
2147483648

Engine options are keywords (``gpu_memory_utilization=0.85``, ``ctx_size=32768``) or one ``Options`` object of
the engine (``gpuplan.engines.vllm.Options(...)``); gpuplan/engines/ validates them, whichever front end calls.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError

from gpuplan.calc.workload import Workload
from gpuplan.engines import default_engine, engine_module, engine_name, make_options
from gpuplan.engines.base import EngineOptions, Hardware, PrecisionRequest
from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel, SourceName, resolve_model
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EngineEstimate, EstimateResult


def load_model(model: str, *, revision: str | None = None, source: SourceName = "auto",
               offline: bool | None = None) -> ResolvedModel:
    """Locate and parse a model: a path, a bundled id or alias, or a Hugging Face Hub id."""
    return resolve_model(model, revision=revision, source=source, offline=offline)


def make_workload(batch: int, seq: int | None, new_tokens: int = 0) -> Workload:
    """A Workload, its bounds said as one InputError a user can act on."""
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


def as_resolved(model: Any, *, revision: str | None = None, source: SourceName = "auto",
                offline: bool | None = None) -> ResolvedModel:
    """A model given as a name or path, a ResolvedModel, a ModelSpec or a GgufModel, as a ResolvedModel."""
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


@functools.lru_cache(maxsize=64)
def _no_gpu(tensor_parallel: int, pipeline_parallel: int) -> Hardware:
    return Hardware(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel)


@functools.lru_cache(maxsize=256)
def _precision_request(dtype: str, kv_dtype: str) -> PrecisionRequest:
    return PrecisionRequest(dtype=dtype, kv_dtype=kv_dtype)


def make_hardware(gpu_spec: Any, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> Hardware:
    """The Hardware of an estimate: a GpuSpec (or None) and the split."""
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if gpu_spec is None:
        return _no_gpu(tensor_parallel, pipeline_parallel)
    return Hardware(gpu=gpu_spec.name, memory_bytes=gpu_spec.usable_bytes, device_bytes=gpu_spec.memory_bytes,
                    cuda_total_known=gpu_spec.cuda_total_bytes is not None, architecture=gpu_spec.architecture,
                    tensor_parallel=tensor_parallel,
                    pipeline_parallel=pipeline_parallel)


def estimate(model: str | ResolvedModel | ModelSpec | Any, *, batch: int = 1, seq: int | None = None,
             new_tokens: int = 0, dtype: str = "auto", kv_dtype: str = "auto", gpu: Any = None,
             gpu_memory: str | int | None = None, tensor_parallel: int = 1, pipeline_parallel: int = 1,
             engine: str | None = None, options: EngineOptions | None = None, revision: str | None = None,
             source: SourceName = "auto", offline: bool | None = None, **engine_options: Any) -> EstimateResult:
    """Estimate per-GPU memory for ``batch`` sequences of ``seq`` tokens (``new_tokens`` of them generated).

    ``engine``: transformers (generate(); the default, llama.cpp for a GGUF file), vllm, sglang or llama.cpp.
    The workload means the same under every engine (gpuplan/calc/workload.py says how each reads it).
    ``gpu`` is a catalog name or a GpuSpec, ``gpu_memory`` a size ("79.2GiB") for a card not in the catalog;
    serving engines need one of them, the others use it for the verdict. Engine options come as keywords or
    as ``options``, an engine's Options object; ``help(gpuplan.engines.vllm.Options)`` lists vLLM's, and
    docs/cli.md every engine's. A keyword of another engine is an InputError that names it.
    """
    resolved = as_resolved(model, revision=revision, source=source, offline=offline)
    name = engine_name(engine) if engine is not None else default_engine(resolved.gguf is not None)
    if options is not None and engine_options:
        raise InputError("give the engine's options as keywords or as an Options object, not both")
    chosen = make_options(name, options if options is not None else engine_options)
    hardware = make_hardware(resolve_gpu(gpu, gpu_memory), tensor_parallel, pipeline_parallel)
    workload = make_workload(batch, seq, new_tokens)
    request = _precision_request(dtype, kv_dtype)
    result: EngineEstimate = engine_module(name).estimate(resolved, request, workload, hardware, chosen)
    return assemble(resolved, name, result, hardware)


def engine_estimate(resolved: ResolvedModel, engine: str, options: EngineOptions, hardware: Hardware, *,
                    batch: int, seq: int | None, new_tokens: int = 0, dtype: str, kv_dtype: str) -> EngineEstimate:
    """The engine's estimate before :func:`assemble` adds the model's identity and the verdict (``engine`` a
    registered name, ``options`` its Options): what :func:`estimate` computes, for the planner, which makes its
    options from it. (estimate() spells these three lines out itself: it runs tens of thousands of times a
    second, and a call more costs it about 0.4%, callgrind.)"""
    workload = make_workload(batch, seq, new_tokens)
    request = _precision_request(dtype, kv_dtype)
    return engine_module(engine).estimate(resolved, request, workload, hardware, options)


def fits_gpu(result: EngineEstimate, hardware: Hardware) -> bool:
    """The verdict against the GPUs of ``hardware``, which names one: the engine's own where it gives one (a
    serving engine's), else whether the total fits a GPU."""
    assert hardware.memory_bytes is not None  # a plan's layouts and estimates with --gpu name one
    return result.fits if result.fits is not None else result.total_bytes <= hardware.memory_bytes


def assemble(resolved: ResolvedModel, engine: str, result: EngineEstimate, hardware: Hardware) -> EstimateResult:
    """An engine's estimate with the model's identity and the verdict against the GPU."""
    spec = resolved.spec
    fit: dict[str, Any] = {}
    if hardware.memory_bytes is not None:
        capacity = hardware.memory_bytes
        fits = result.fits if result.fits is not None else result.total_bytes <= capacity  # as fits_gpu()
        fit = {"gpu": hardware.gpu, "gpu_memory_bytes": capacity, "fits": fits,
               "headroom_bytes": capacity - result.total_bytes}
        if not fits and result.fit_reason is None:
            fit["fit_reason"] = (f"needs {result.total_bytes / 2**30:,.2f} GiB per GPU, the GPU has "
                                 f"{capacity / 2**30:,.2f} GiB")
    # The engine's fields as they are (nested results pass as instances, not dumped and rebuilt).
    skip = {"notes", "fits", *fit}
    fields = {k: v for k, v in result.__dict__.items() if k not in skip}
    return EstimateResult(
        **fields, **fit, model=resolved.id, source=resolved.source, revision=resolved.revision,
        commit=resolved.commit, model_type=spec.model_type, attention=spec.attention_kind, engine=engine,
        parameters=spec.parameters, loaded_parameters=spec.loaded_parameters,
        notes=list(resolved.notices) + list(spec.notes) + list(result.notes))


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
    from gpuplan.calc.overhead import NON_TORCH_BYTES, TRAINING_NON_TORCH_BYTES, expandable_segments_from_env
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
    resolved = as_resolved(model, revision=revision, source=source, offline=offline)
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
        expandable_segments = expandable_segments_from_env()
    slack, larger_card = _training_allocator_terms(spec, setup, mem.largest_transient_bytes, expandable_segments)
    non_torch = TRAINING_NON_TORCH_BYTES if larger_card is not None else NON_TORCH_BYTES
    overhead = non_torch + slack
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
        components={**mem.components, "allocator_slack": slack, "non_torch": non_torch,
                    **({"reserved_on_larger_card": mem.peak_allocated_bytes + larger_card}
                       if larger_card is not None else {})},
        notes=notes, warnings=warnings, **fit)


def _training_allocator_terms(spec: Any, setup: Any, largest_transient: int,
                              expandable_segments: bool) -> tuple[int, int | None]:
    """What PyTorch's caching allocator needs beyond the peak of live tensors in a training run: simulated
    (gpuplan/calc/training_allocations.py) on one GPU, on the smallest card that runs it, and on a card with room
    to spare (None where not simulated). Sharded runs (ZeRO, FSDP, DDP) keep the older bound, the largest
    temporary tensor: their communication buffers are not in the simulated sequence."""
    from gpuplan.calc.training_allocations import training_allocator_fit

    if setup.gpus != 1 or setup.zero or setup.fsdp:
        return (0 if expandable_segments else largest_transient), None
    fit = training_allocator_fit(spec, setup, expandable_segments)
    return (max(0, fit.limit_bytes - fit.peak_allocated_bytes),
            max(0, fit.peak_reserved_bytes - fit.peak_allocated_bytes))
