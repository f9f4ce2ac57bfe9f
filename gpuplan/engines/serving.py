"""What the serving engines (vLLM, SGLang) share: how they read the workload, and how a budget becomes an
estimate (the KV pool, the verdict and its warnings)."""

from __future__ import annotations

from typing import Any

from gpuplan.calc.precision import Precision
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import Hardware, gguf_note
from gpuplan.errors import InputError
from gpuplan.results import EngineEstimate, ServingBudget


def model_len(spec: Any, workload: Workload, max_model_len: int | None) -> int:
    """The context per request: --max-model-len, else the workload's seq, else the model's context."""
    if max_model_len is not None and workload.seq is not None and max_model_len != workload.seq:
        raise InputError(f"seq {workload.seq:,} and max_model_len {max_model_len:,} disagree",
                         hint="for a serving engine they are the same number: give one of them")
    length = max_model_len or workload.seq or spec.max_position_embeddings
    if length is None:
        raise InputError("the model's config gives no context length", hint="pass --max-model-len")
    return length


def serving_notes(model: Any, engine: str, precision: Precision, hardware: Hardware) -> list[str]:
    notes = gguf_note(model, engine, precision)
    if not hardware.cuda_total_known:
        notes.append(f"{hardware.gpu}: no CUDA-reported total is known, so the driver total is used; CUDA "
                     "usually sees a few hundred MiB less")
    return notes


def serving_estimate(serving: ServingBudget, precision: Precision, workload: Workload, hardware: Hardware, *,
                     kv_dtype: str, weights: int, kv_bytes: int, activation: int, overhead: int,
                     notes: list[str]) -> EngineEstimate:
    """The estimate of a serving engine's budget: it fits when one request of max_model_len fits and the KV
    cache holds ``workload.batch`` of them at once."""
    batch, length = workload.batch, serving.max_model_len
    fits = serving.fits_one_request and (batch <= 1 or serving.kv_cache_tokens >= batch * length)
    warnings: list[str] = []
    if not serving.fits_one_request:
        warnings.append(f"one request of {length:,} tokens does not fit; the longest that fits is "
                        f"{serving.max_model_len_that_fits:,}")
    elif not fits:
        warnings.append(f"{batch} concurrent requests of {length:,} tokens do not fit: "
                        f"{serving.max_concurrency:.2f}x do")
    peak = weights + kv_bytes + activation
    return EngineEstimate(
        attn_implementation=serving.engine, dtype=precision.weights, compute_dtype=precision.compute_dtype,
        kv_dtype=kv_dtype, batch=batch, seq=length, prompt_tokens=length, new_tokens=0, gpus=hardware.gpus,
        tensor_parallel=hardware.tensor_parallel, pipeline_parallel=hardware.pipeline_parallel, fits=fits,
        weights_bytes=weights, kv_cache_bytes=kv_bytes, activation_bytes=activation, overhead_bytes=overhead,
        peak_allocated_bytes=peak, total_bytes=peak + overhead, serving=serving, notes=notes, warnings=warnings)
