"""What would make a workload that does not fit fit: each knob tried, estimated, and reported with its figure.

``estimate_suggestions(model, call, result)`` takes the keywords that :func:`gpuplan.estimate` was called with
and its result; ``train_suggestions`` the same for :func:`gpuplan.train`. Each suggestion is a real estimate
with one thing changed (fewer sequences, a shorter context, an fp8 KV cache, 4-bit weights, more GPUs; for
training checkpointing, QLoRA, ZeRO-3 or a smaller micro-batch), so the figure it shows is the one gpuplan
would print for that command.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gpuplan.engines import LLAMACPP, SERVING_ENGINES
from gpuplan.engines.base import largest_fitting
from gpuplan.errors import GpuplanError
from gpuplan.results import EstimateResult, FitSuggestion, TrainResult

# The tensor / pipeline parallel sizes people deploy inside one node (NVLink or PCIe peers).
NODE_SIZES = (2, 4, 8)


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n in [low, high] for which ``fits(n)`` holds, for a ``fits`` that holds below some n."""
    if high < low or not fits(low):
        return None
    return largest_fitting(low, high, fits)


class _Trial:
    """Estimates of one call with one change, cached, errors counted as "does not fit"."""

    def __init__(self, run: Callable[..., Any], call: dict[str, Any]) -> None:
        self.run, self.call = run, call
        self.cache: dict[tuple, Any] = {}

    def __call__(self, **change: Any) -> Any:
        key = tuple(sorted((k, repr(v)) for k, v in change.items()))
        if key not in self.cache:
            try:
                self.cache[key] = self.run(**{**self.call, **change})
            except GpuplanError:
                self.cache[key] = None
        return self.cache[key]

    def fits(self, **change: Any) -> bool:
        result = self(**change)
        return result is not None and bool(result.fits)


def _suggestion(change: str, flag: str, result: Any) -> FitSuggestion | None:
    if result is None or result.gpu_memory_bytes is None:
        return None
    return FitSuggestion(change=change, flag=flag, total_bytes=result.total_bytes,
                         gpu_memory_bytes=result.gpu_memory_bytes, fits=bool(result.fits))


def _length_change(result: EstimateResult, call: dict[str, Any], n: int) -> tuple[dict[str, Any], str]:
    """The change that sets the context to ``n`` tokens, and its flag, as the call spelled the context."""
    options = call.get("options")
    given = options.model_fields_set if options is not None else set()
    for name, flag in (("max_model_len", "--max-model-len"), ("ctx_size", "--ctx-size")):
        if name in given:
            return {"options": options.model_copy(update={name: n})}, f"{flag} {n}"
    return {"seq": n}, f"--seq {n}"


def estimate_suggestions(model: Any, call: dict[str, Any], result: EstimateResult) -> list[FitSuggestion]:
    """Changes that would make ``result`` (of ``gpuplan.estimate(model, **call)``) fit its GPU."""
    if result.fits is not False:
        return []
    from gpuplan.api import estimate

    trial = _Trial(lambda **kw: estimate(model, **kw), call)
    found: list[FitSuggestion | None] = []
    if result.batch > 1 and result.engine != LLAMACPP:
        batch = _largest(1, result.batch - 1, lambda b: trial.fits(batch=b))
        if batch is not None:
            found.append(_suggestion(f"{batch} sequences at once instead of {result.batch}", f"--batch {batch}",
                                     trial(batch=batch)))
    found.append(_shorter_context(trial, result, call))
    pinned = _pinned_kv_cache(trial, result, call)
    if pinned is not None:
        return [s for s in [*found, pinned, *_more_gpus(trial, result)] if s is not None]
    found += _precision_changes(trial, result)
    found += _more_gpus(trial, result)
    if result.engine == LLAMACPP and result.llamacpp is not None:
        found.append(_fewer_gpu_layers(trial, result, call))
    return [s for s in found if s is not None]


def _shorter_context(trial: _Trial, result: EstimateResult, call: dict[str, Any]) -> FitSuggestion | None:
    floor = result.new_tokens + 1
    total = result.seq * (result.batch if result.engine == LLAMACPP else 1)

    def at(n: int) -> Any:
        change, _ = _length_change(result, call, n)
        return trial(**change)

    longest = _largest(floor, total - 1, lambda n: bool((r := at(n)) is not None and r.fits))
    if longest is None:
        return None
    _, flag = _length_change(result, call, longest)
    return _suggestion(f"a context of {longest:,} tokens instead of {total:,}", flag, at(longest))


def _pinned_kv_cache(trial: _Trial, result: EstimateResult, call: dict[str, Any]) -> FitSuggestion | None:
    """With --kv-cache-memory the pool is what was asked for: the largest one that leaves the rest room."""
    options = call.get("options")
    if options is None or "kv_cache_memory" not in options.model_fields_set or result.gpu_memory_bytes is None:
        return None
    room = result.gpu_memory_bytes - (result.total_bytes - result.kv_cache_bytes)
    gib = math.floor(room / 2**30 * 100) / 100  # what the flag says, rounded down so that it still fits
    if gib <= 0:
        return None
    kv = trial(options=options.model_copy(update={"kv_cache_memory": int(gib * 2**30)}))
    return _suggestion(f"a KV cache of {gib:,.2f} GiB", f"--kv-cache-memory {gib:.2f}GiB", kv)


def _precision_changes(trial: _Trial, result: EstimateResult) -> list[FitSuggestion | None]:
    if result.engine == LLAMACPP:
        cache = {"options": trial.call["options"].model_copy(update={"cache_type_k": "q8_0", "cache_type_v": "q8_0"})}
        return [] if result.kv_dtype == "q8_0" else [
            _suggestion("an 8-bit KV cache", "-ctk q8_0 -ctv q8_0", trial(**cache))]
    out: list[FitSuggestion | None] = []
    if not result.kv_dtype.startswith("fp8"):
        out.append(_suggestion("an fp8 KV cache", "--kv-dtype fp8", trial(kv_dtype="fp8")))
    if not result.dtype.startswith(("int4", "nf4", "mxfp4")):
        serving = result.engine in SERVING_ENGINES
        change = "4-bit weights (an AWQ or GPTQ checkpoint)" if serving else "4-bit weights"
        out.append(_suggestion(change, "--dtype int4", trial(dtype="int4")))
    return out


def _more_gpus(trial: _Trial, result: EstimateResult) -> list[FitSuggestion | None]:
    if result.engine == LLAMACPP:
        return []
    key, flag = (("tensor_parallel", "-tp") if result.engine in SERVING_ENGINES else
                 ("pipeline_parallel", "--pipeline-parallel-size"))
    current = getattr(result, key)
    for size in (n for n in NODE_SIZES if n > current):
        if trial.fits(**{key: size}):
            return [_suggestion(f"{size} GPUs instead of {result.gpus}", f"{flag} {size}", trial(**{key: size}))]
    return []


def _fewer_gpu_layers(trial: _Trial, result: EstimateResult, call: dict[str, Any]) -> FitSuggestion | None:
    options = call["options"]
    run = result.llamacpp
    layers = _largest(0, run.layers_on_gpu + int(run.output_on_gpu) - 1,
                      lambda n: trial.fits(options=options.model_copy(update={"n_gpu_layers": n})))
    if layers is None:
        return None
    return _suggestion(f"{layers} layers on the GPU, the rest in host memory", f"-ngl {layers}",
                       trial(options=options.model_copy(update={"n_gpu_layers": layers})))


def train_suggestions(model: Any, call: dict[str, Any], result: TrainResult) -> list[FitSuggestion]:
    """Changes that would make ``result`` (of ``gpuplan.train(model, **call)``) fit its GPU."""
    if result.fits is not False:
        return []
    from gpuplan.api import train

    trial = _Trial(lambda **kw: train(model, **kw), call)
    found: list[FitSuggestion | None] = []
    if not result.grad_checkpointing:
        found.append(_suggestion("gradient checkpointing", "--grad-checkpointing", trial(grad_checkpointing=True)))
    if result.method != "qlora":
        found.append(_suggestion("QLoRA (a 4-bit base with LoRA adapters)", "--method qlora",
                                 trial(method="qlora", lora_rank=call.get("lora_rank"))))
    if result.optimizer == "adamw" and result.method == "full":
        found.append(_suggestion("the 8-bit AdamW", "--optimizer adamw-8bit", trial(optimizer="adamw-8bit")))
    if result.batch > 1:
        found.append(_micro_batch(trial, result, {}, "micro-batch {batch}, accumulating {steps} steps for the "
                                                     "same batch", "--batch {batch} --grad-accumulation {steps}"))
    if not any(f is not None and f.fits for f in found) and result.method != "qlora":
        found.append(_lean_recipe(trial, result, call))
    if result.method == "full" and result.zero != 3:
        for gpus in (n for n in NODE_SIZES if n >= max(2, result.gpus)):
            if trial.fits(zero=3, fsdp=False, gpus=gpus):
                found.append(_suggestion(f"DeepSpeed ZeRO-3 over {gpus} GPUs", f"--zero 3 --gpus {gpus}",
                                         trial(zero=3, fsdp=False, gpus=gpus)))
                break
    return [s for s in found if s is not None]


def _lean_recipe(trial: _Trial, result: TrainResult, call: dict[str, Any]) -> FitSuggestion | None:
    """QLoRA with checkpointing at the largest micro-batch that fits, when no single change is enough."""
    lean = {"method": "qlora", "grad_checkpointing": True, "lora_rank": call.get("lora_rank")}
    return _micro_batch(trial, result, lean, "QLoRA with gradient checkpointing, micro-batch {batch} x {steps} steps",
                        "--method qlora --grad-checkpointing --batch {batch} --grad-accumulation {steps}",
                        largest=result.batch)


def _micro_batch(trial: _Trial, result: TrainResult, change: dict[str, Any], words: str, flags: str, *,
                 largest: int | None = None) -> FitSuggestion | None:
    """The largest micro-batch that fits (with ``change``) and divides the effective batch, which gradient
    accumulation keeps as it was."""
    effective = result.batch * result.grad_accumulation
    top = result.batch - 1 if largest is None else largest
    for batch in sorted((b for b in range(1, top + 1) if effective % b == 0), reverse=True):
        if trial.fits(batch=batch, grad_accumulation=effective // batch, **change):
            steps = effective // batch
            return _suggestion(words.format(batch=batch, steps=steps), flags.format(batch=batch, steps=steps),
                               trial(batch=batch, grad_accumulation=steps, **change))
    return None


# The facade's own keywords; the rest of a call are the engine's options.
_WORKLOAD_AND_HARDWARE = ("batch", "seq", "new_tokens", "dtype", "kv_dtype", "gpu", "gpu_memory", "tensor_parallel",
                          "pipeline_parallel")


def estimate_with_advice(model: Any, **call: Any) -> EstimateResult:
    """``gpuplan.estimate(model, **call)``, with ``suggestions`` filled in when it does not fit (what the CLI
    prints and the web API returns)."""
    from gpuplan.api import as_resolved, estimate
    from gpuplan.engines import default_engine, engine_name, make_options

    resolved = as_resolved(model, revision=call.pop("revision", None), source=call.pop("source", "auto"),
                           offline=call.pop("offline", None))
    engine = engine_name(call["engine"]) if call.get("engine") else default_engine(resolved.gguf is not None)
    named = {k: call.pop(k) for k in _WORKLOAD_AND_HARDWARE if k in call}
    options = call.pop("options", None)
    call.pop("engine", None)
    full = {**named, "engine": engine, "options": options if options is not None else make_options(engine, call)}
    result = estimate(resolved, **full)
    if result.fits is False:
        result = result.model_copy(update={"suggestions": estimate_suggestions(resolved, full, result)})
    return result


def train_with_advice(model: Any, **call: Any) -> TrainResult:
    """``gpuplan.train(model, **call)``, with ``suggestions`` filled in when it does not fit."""
    from gpuplan.api import as_resolved, train

    resolved = as_resolved(model, revision=call.pop("revision", None), source=call.pop("source", "auto"),
                           offline=call.pop("offline", None))
    result = train(resolved, **call)
    if result.fits is False:
        result = result.model_copy(update={"suggestions": train_suggestions(resolved, call, result)})
    return result
