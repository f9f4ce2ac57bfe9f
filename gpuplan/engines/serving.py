"""What the serving engines (vLLM, SGLang) share: how they read the workload, and how a budget becomes an
estimate (the KV pool, the verdict and its warnings)."""

from __future__ import annotations

import functools
from typing import Any

from gpuplan.calc.precision import Precision
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import Hardware, gguf_note
from gpuplan.errors import InputError
from gpuplan.results import EngineEstimate, ServingBudget

# Environment variables that let each engine start with a context longer than the model's: vLLM's
# vllm/config.py _get_and_verify_max_len raises "User-specified max_model_len (...) is greater than the derived
# max_model_len (...)" unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set; SGLang's model_config.py the same unless
# SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN is set.
LONG_CONTEXT_VARIABLES = {"vllm": "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
                          "sglang": "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"}


def beyond_context(engine: str, spec: Any, length: int) -> str | None:
    """Why the engine refuses to start with ``length`` tokens per request, when it does."""
    import os

    context = spec.max_position_embeddings
    variable = LONG_CONTEXT_VARIABLES[engine]
    if not context or length <= context or os.environ.get(variable, "").strip() not in ("", "0", "false"):
        return None
    return (f"a context of {length:,} tokens is longer than the model's {context:,}: {engine} refuses to start "
            f"unless {variable}=1 is set")


def model_len(spec: Any, workload: Workload, max_model_len: int | None) -> int:
    """The context per request: --max-model-len, else the workload's seq, else the model's context. -1 is
    --max-model-len auto, which the engine resolves."""
    if max_model_len is not None and workload.seq is not None and max_model_len != workload.seq:
        asked = "auto" if max_model_len == -1 else f"{max_model_len:,}"
        raise InputError(f"seq {workload.seq:,} and max_model_len {asked} disagree",
                         hint="for a serving engine they are the same number: give one of them")
    length = max_model_len or workload.seq or spec.max_position_embeddings
    if length is None:
        raise InputError("the model's config gives no context length", hint="pass --max-model-len")
    return length


@functools.cache
def _installed_version(engine: str) -> str | None:
    """The installed release of ``engine`` from its package metadata, looked up once per process: a plan asks
    for it once per layout tried, and each lookup scans every installed distribution (about 0.25 ms)."""
    from importlib import metadata

    try:
        return metadata.version(engine)
    except metadata.PackageNotFoundError:
        return None


def release_version(engine: str, given: str | None, notes: list[str]) -> str | None:
    """The release to model: the one given, else the one installed here (its package metadata; the package is
    never imported), else None, which the engine reads as the newest release gpuplan has read."""
    if given is not None:
        return given
    installed = _installed_version(engine)
    if installed is None:
        return None
    from gpuplan.engines.vllm_releases import parse_release

    if engine == "vllm":
        from gpuplan.engines.vllm_releases import NEWEST, OLDEST, SUPPORTED
    elif engine == "transformers":
        from gpuplan.engines.transformers_releases import NEWEST, OLDEST, SUPPORTED
    else:
        from gpuplan.engines.sglang_releases import NEWEST, OLDEST, SUPPORTED
    try:
        in_range = OLDEST <= parse_release(installed) <= NEWEST
    except ValueError:
        in_range = False
    if not in_range:
        notes.append(f"{engine} {installed} is installed here, outside the releases gpuplan models ({SUPPORTED}): "
                     "modelled as the newest; pass --engine-version to choose")
        return None
    notes.append(f"{engine} {installed} is installed here: modelled as that release (--engine-version to change)")
    return installed


def serving_notes(model: Any, engine: str, precision: Precision, hardware: Hardware) -> list[str]:
    notes = gguf_note(model, engine, precision)
    if not hardware.cuda_total_known:
        notes.append(f"{hardware.gpu}: no CUDA-reported total is known, so the driver total is used; CUDA "
                     "usually sees a few hundred MiB less")
    return notes


def serving_estimate(serving: ServingBudget, precision: Precision, workload: Workload, hardware: Hardware, *,
                     kv_dtype: str, weights: int, kv_bytes: int, activation: int, overhead: int,
                     notes: list[str], refused: str | None = None) -> EngineEstimate:
    """The estimate of a serving engine's budget: it fits when the engine starts (``refused`` says why it
    would not), the whole budget is within the GPU, one request of max_model_len fits and the KV cache holds
    ``workload.batch`` of them at once."""
    batch, length = workload.batch, serving.max_model_len
    peak = weights + kv_bytes + activation
    capacity = hardware.memory_bytes or 0
    reasons: list[str] = [refused] if refused else []
    if peak + overhead > capacity:
        reasons.append(f"weights, KV cache and activations need {(peak + overhead) / 2**30:,.2f} GiB per GPU, the "
                       f"GPU has {capacity / 2**30:,.2f} GiB")
    if not serving.fits_one_request:
        reasons.append(f"one request of {length:,} tokens does not fit; the longest that fits is "
                       f"{serving.max_model_len_that_fits:,}")
    elif batch > 1 and serving.kv_cache_tokens < batch * length:
        reasons.append(f"{batch} concurrent requests of {length:,} tokens do not fit: "
                       f"{serving.max_concurrency:.2f}x do")
    fits = not reasons
    warnings = list(reasons)
    return EngineEstimate(
        attn_implementation=serving.engine, dtype=precision.weights, compute_dtype=precision.compute_dtype,
        kv_dtype=kv_dtype, batch=batch, seq=length, prompt_tokens=length, new_tokens=0, gpus=hardware.gpus,
        tensor_parallel=hardware.tensor_parallel, pipeline_parallel=hardware.pipeline_parallel, fits=fits,
        weights_bytes=weights, kv_cache_bytes=kv_bytes, activation_bytes=activation, overhead_bytes=overhead,
        peak_allocated_bytes=peak, total_bytes=peak + overhead, serving=serving, notes=notes, warnings=warnings,
        fit_reason=reasons[0] if reasons else None)


def prepare(engine: str, model: Any, request: Any, workload: Workload, hardware: Hardware,
            options: Any) -> tuple[int, Precision, int, list[str], str]:
    """What both serving engines read first: the GPU's memory, the precision, the context per request, the
    notes so far and the release modelled."""
    capacity = hardware.require_gpu(engine)
    precision = request.resolve(model.spec)
    length = model_len(model.spec, workload, options.max_model_len)
    notes = serving_notes(model, engine, precision, hardware)
    return capacity, precision, length, notes, release_version(engine, options.engine_version, notes)
