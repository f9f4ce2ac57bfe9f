"""The library facade: what the CLI, the tests and users' scripts call.

>>> import gpuplan
>>> r = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", seq=4096)
>>> r.kv_cache_bytes
2147483648
"""

from __future__ import annotations

from pydantic import ValidationError

from gpuplan.calc.estimate import ENGINES, estimate_memory
from gpuplan.calc.precision import resolve_precision
from gpuplan.calc.weights import checkpoint_bytes, unloaded_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.transformers import ATTN_IMPLS
from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel, SourceName, resolve_model
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EstimateResult


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


def estimate(model: str | ResolvedModel | ModelSpec, *, dtype: str = "auto", kv_dtype: str = "auto",
             batch: int = 1, seq: int = 2048, new_tokens: int = 1, engine: str = "transformers",
             attn: str = "sdpa", revision: str | None = None, source: SourceName = "auto",
             offline: bool | None = None) -> EstimateResult:
    """Estimate GPU memory for one workload. ``model`` may be a name/path or an already loaded model."""
    if isinstance(model, str):
        resolved = resolve_model(model, revision=revision, source=source, offline=offline)
    elif isinstance(model, ModelSpec):
        resolved = ResolvedModel(id=model.model_type, source="local", spec=model)
    else:
        resolved = model
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}", hint=f"use one of: {', '.join(ENGINES)}")
    if attn not in ATTN_IMPLS:
        raise InputError(f"unknown attention implementation {attn!r}", hint=f"use one of: {', '.join(ATTN_IMPLS)}")
    spec = resolved.spec
    workload = make_workload(batch, seq, new_tokens)
    precision = resolve_precision(spec, dtype, kv_dtype)
    notes = list(resolved.notices) + list(spec.notes)
    weights_override = None
    if resolved.safetensors_parameters and dtype == "auto":
        stored = checkpoint_bytes(resolved.safetensors_parameters)
        if stored is not None:
            weights_override = stored - unloaded_bytes(spec, precision)
            notes.append("weights: exact stored bytes from the checkpoint's safetensors headers")
    breakdown = estimate_memory(spec, workload, precision, engine=engine, attn=attn,  # type: ignore[arg-type]
                                weights_override=weights_override)
    warnings: list[str] = []
    if spec.max_position_embeddings and workload.seq > spec.max_position_embeddings:
        warnings.append(f"seq {workload.seq} exceeds the model's context length of "
                        f"{spec.max_position_embeddings} tokens")
    return EstimateResult(
        model=resolved.id,
        source=resolved.source,
        revision=resolved.revision,
        commit=resolved.commit,
        model_type=spec.model_type,
        attention=spec.attention_kind,
        engine=engine,
        attn_implementation=attn,
        dtype=precision.weights,
        compute_dtype=precision.compute_dtype,
        kv_dtype=precision.kv_dtype,
        batch=workload.batch,
        seq=workload.seq,
        prompt_tokens=workload.prompt_tokens,
        new_tokens=workload.new_tokens,
        parameters=spec.parameters,
        loaded_parameters=spec.loaded_parameters,
        weights_bytes=breakdown.weights_bytes,
        kv_cache_bytes=breakdown.kv_cache_bytes,
        activation_bytes=breakdown.activation_bytes,
        overhead_bytes=breakdown.overhead_bytes,
        peak_allocated_bytes=breakdown.peak_allocated_bytes,
        total_bytes=breakdown.total_bytes,
        components=breakdown.components,
        notes=notes,
        warnings=warnings,
    )
