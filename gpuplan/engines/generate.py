"""The transformers engine: generate() of a workload on one GPU or spread over several, in integer bytes.

The memory model itself (what generate() allocates, term by term) is gpuplan/engines/transformers.py; this
module adds the weights, the overhead and the allocator's slack, and declares the engine's options.
"""


from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuplan.calc.allocator import AllocatorFit
from gpuplan.calc.overhead import expandable_segments_from_env, overhead_bytes
from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import checkpoint_bytes, unloaded_bytes, weights_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.base import EngineOptions, Hardware, PrecisionRequest, gguf_note
from gpuplan.engines.serving import release_version
from gpuplan.engines.transformers import AttnImpl, estimate_generate
from gpuplan.engines.transformers_allocations import allocator_fit
from gpuplan.engines.transformers_releases import as_cached_by, transformers_release
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EngineEstimate, GpuMemory


class Breakdown(BaseModel):
    """Bytes per GPU. peak_allocated = weights + kv cache + activations; total = peak_allocated + overhead."""

    model_config = ConfigDict(frozen=True)

    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int
    total_bytes: int
    components: dict[str, int]


def estimate_memory(spec: ModelSpec, workload: Workload, precision: Precision, *,
                    attn: AttnImpl = "sdpa",
                    weights_override: int | None = None, expandable_segments: bool = False) -> Breakdown:
    """``weights_override``: exact weight bytes known from elsewhere (the checkpoint's safetensors headers).
    ``expandable_segments``: PyTorch's allocator runs with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.
    ``total_bytes`` is the smallest GPU memory in which the run completes: the peak of live tensors, what the
    caching allocator needs beyond it on such a card (simulated), and the memory outside torch."""
    weights = weights_bytes(spec, precision) if weights_override is None else weights_override
    mem = estimate_generate(spec, workload, precision, weights, attn)
    fit = allocator_fit(spec, workload, precision, weights, attn, expandable_segments)
    slack, larger_card = allocator_terms(fit)
    overhead = overhead_bytes(slack)
    return Breakdown(
        weights_bytes=mem.weights_bytes,
        kv_cache_bytes=mem.kv_cache_bytes,
        activation_bytes=mem.activation_bytes,
        overhead_bytes=overhead,
        peak_allocated_bytes=mem.peak_allocated_bytes,
        total_bytes=mem.peak_allocated_bytes + overhead,
        components={**mem.components, "allocator_slack": slack,
                    "reserved_on_larger_card": mem.peak_allocated_bytes + larger_card},
    )


def allocator_terms(fit: AllocatorFit) -> tuple[int, int]:
    """What PyTorch's caching allocator adds to the peak of live tensors (gpuplan/calc/allocator.py, replaying
    generate()'s allocations): on the smallest card that runs the workload, where the allocator releases its
    cache and retries before it fails; and on a card with room to spare, where it keeps every cached block
    (what torch.cuda.max_memory_reserved and nvidia-smi show there)."""
    return (max(0, fit.limit_bytes - fit.peak_allocated_bytes),
            max(0, fit.peak_reserved_bytes - fit.peak_allocated_bytes))


def estimate_memory_split(spec: ModelSpec, workload: Workload, precision: Precision, gpus: int, *,
                          attn: AttnImpl = "sdpa", capacity_bytes: int | None = None,
                          expandable_segments: bool = False) -> list[Breakdown]:
    """Per-GPU breakdowns of generate() with the model spread over ``gpus`` GPUs by ``device_map="auto"``
    (gpuplan/engines/device_map.py): each GPU holds whole decoder layers, their KV cache and their
    activations; the embedding output stays on the first GPU, the logits on the last."""
    from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
    from gpuplan.engines.device_map import balanced_split, share_spec

    out = []
    for share in balanced_split(spec, precision, gpus, capacity_bytes):
        if share.layers == 0:
            # Only the final norm / lm_head: their logits and the cuBLAS workspace.
            logits = workload.batch * spec.vocab_size * (precision.compute_bytes + 4) if share.holds_lm_head else 0
            peak = share.weights_bytes + logits + CUBLAS_WORKSPACE_BYTES
            overhead = overhead_bytes(0)
            out.append(Breakdown(weights_bytes=share.weights_bytes, kv_cache_bytes=0,
                                 activation_bytes=peak - share.weights_bytes, overhead_bytes=overhead,
                                 peak_allocated_bytes=peak, total_bytes=peak + overhead,
                                 components={"logits": logits, "cublas_workspace": CUBLAS_WORKSPACE_BYTES}))
            continue
        part = share_spec(spec, share)
        mem = estimate_generate(part, workload, precision, share.weights_bytes, attn,
                                holds_embedding=share.holds_embedding, holds_lm_head=share.holds_lm_head)
        slack, _ = allocator_terms(allocator_fit(part, workload, precision, share.weights_bytes, attn,
                                                 expandable_segments))
        overhead = overhead_bytes(slack)
        out.append(Breakdown(
            weights_bytes=mem.weights_bytes, kv_cache_bytes=mem.kv_cache_bytes,
            activation_bytes=mem.activation_bytes, overhead_bytes=overhead,
            peak_allocated_bytes=mem.peak_allocated_bytes, total_bytes=mem.peak_allocated_bytes + overhead,
            components={**mem.components, "allocator_slack": slack, "layers": share.layers,
                        "first_layer": share.first_layer},
        ))
    return out


# ---- the transformers engine: options and the estimate behind `--engine transformers` -------------------

NAME = "transformers"
SUMMARY = "Hugging Face transformers generate(): prefill of the prompt, then decoding"
SERVING = False
# transformers' generate() default when no length is asked for; gpuplan's long-standing --seq default.
DEFAULT_SEQ = 2048


class Options(EngineOptions):
    """transformers generate() flags that change memory."""

    attn: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa", description="attention implementation (attn_implementation=): sdpa, eager, "
                                    "flash_attention_2.")
    engine_version: str | None = Field(
        default=None, json_schema_extra={"metavar": "X.Y.Z"},
        description="transformers release whose generate() is modelled, 5.17.0 to 5.25.0 (default: the "
                    "transformers installed here, else 5.25.0).")
    expandable_segments: bool | None = Field(
        default=None, description="PyTorch's allocator grows segments in place (PYTORCH_CUDA_ALLOC_CONF="
                                  "expandable_segments:True), which removes most allocator slack. Default: read "
                                  "that variable.")

    @field_validator("attn", mode="before")
    @classmethod
    def _attn_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def estimate(model: Any, request: PrecisionRequest, workload: Workload, hardware: Hardware,
             options: Options) -> EngineEstimate:
    """generate() of ``workload`` on one GPU, or spread over ``hardware.pipeline_parallel`` GPUs whole layers at a
    time as device_map="auto" places them."""
    if hardware.tensor_parallel != 1:
        raise InputError("transformers does not shard layers over GPUs (no tensor parallelism in generate())",
                         hint="use --pipeline-parallel-size N to spread whole layers over N GPUs as "
                              "device_map='auto' does, or --engine vllm / sglang for tensor parallel serving")
    notes = gguf_note(model, NAME, request.resolve(model.spec))
    spec = _release_spec(model.spec, options.engine_version, notes)
    precision = request.resolve(spec)
    work = workload.with_seq(DEFAULT_SEQ)
    expandable = expandable_segments_from_env() if options.expandable_segments is None else \
        options.expandable_segments
    pp = hardware.pipeline_parallel
    per_gpu = None
    if pp > 1:
        shares = estimate_memory_split(spec, work, precision, pp, attn=options.attn,
                                       capacity_bytes=hardware.memory_bytes, expandable_segments=expandable)
        per_gpu = [GpuMemory(index=i, first_layer=b.components.get("first_layer", 0),
                             layers=b.components.get("layers", 0), weights_bytes=b.weights_bytes,
                             kv_cache_bytes=b.kv_cache_bytes, activation_bytes=b.activation_bytes,
                             overhead_bytes=b.overhead_bytes, peak_allocated_bytes=b.peak_allocated_bytes,
                             total_bytes=b.total_bytes)
                   for i, b in enumerate(shares)]
        breakdown = max(shares, key=lambda b: b.total_bytes)
        notes.append(f"spread over {pp} GPUs as device_map='auto' places whole layers (transformers' balanced "
                     "split); figures are the most loaded GPU's, per_gpu has each one")
    else:
        weights_override = _stored_weights(model, request, precision, notes)
        breakdown = estimate_memory(spec, work, precision, attn=options.attn, weights_override=weights_override,
                                    expandable_segments=expandable)
        if not expandable:
            note = _expandable_note(spec, work, precision, options.attn, breakdown)
            if note:
                notes.append(note)
    warnings: list[str] = []
    if spec.max_position_embeddings and work.seq > spec.max_position_embeddings:  # type: ignore[operator]
        warnings.append(f"seq {work.seq} exceeds the model's context length of "
                        f"{spec.max_position_embeddings} tokens")
    return EngineEstimate(
        attn_implementation=options.attn, dtype=precision.weights, compute_dtype=precision.compute_dtype,
        kv_dtype=precision.kv_dtype, batch=work.batch, seq=work.seq, prompt_tokens=work.prompt_tokens,
        new_tokens=work.new_tokens, gpus=pp, pipeline_parallel=pp,
        weights_bytes=breakdown.weights_bytes, kv_cache_bytes=breakdown.kv_cache_bytes,
        activation_bytes=breakdown.activation_bytes, overhead_bytes=breakdown.overhead_bytes,
        peak_allocated_bytes=breakdown.peak_allocated_bytes, total_bytes=breakdown.total_bytes,
        components=breakdown.components, per_gpu=per_gpu, notes=notes, warnings=warnings)


def _release_spec(spec: ModelSpec, version: str | None, notes: list[str]) -> ModelSpec:
    """``spec`` as the transformers release modelled caches it (gpuplan/engines/transformers_releases.py): the one
    given, else the one installed here (package metadata, never imported), else the newest read."""
    release = transformers_release(release_version(NAME, version, notes))
    cached = as_cached_by(spec, release)
    if cached is not spec:
        notes.append(f"transformers {release.version} caches this model's attention as K/V expanded to every head "
                     "(keys and values of each head), not MLA's latents (changed in 5.18.0)")
    return cached


# A saving worth a note: more than the 5% the estimate itself is held to (docs/accuracy.md, "Does it fit").
EXPANDABLE_NOTE_SHARE = 0.05


def _expandable_note(spec: ModelSpec, workload: Workload, precision: Precision, attn: str,
                     breakdown: Breakdown) -> str | None:
    """Say what expandable segments would save when the default allocator's slack is a large part of the total."""
    if breakdown.components.get("allocator_slack", 0) <= EXPANDABLE_NOTE_SHARE * breakdown.total_bytes:
        return None
    slack, _ = allocator_terms(allocator_fit(spec, workload, precision, breakdown.weights_bytes, attn, True))
    alternative = breakdown.peak_allocated_bytes + overhead_bytes(slack)  # the same tensors, segments grown in place
    if breakdown.total_bytes - alternative <= EXPANDABLE_NOTE_SHARE * breakdown.total_bytes:
        return None
    return (f"with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True it needs {alternative / 2**30:,.1f} "
            f"GiB instead of {breakdown.total_bytes / 2**30:,.1f} GiB: the default allocator strands freed blocks "
            "that later, larger tensors cannot reuse")


def _stored_weights(model: Any, request: PrecisionRequest, precision: Precision, notes: list[str]) -> int | None:
    """The exact weight bytes from the checkpoint's safetensors headers, when they are at hand and the
    weights load as stored (--dtype auto)."""
    if not getattr(model, "safetensors_parameters", None) or request.dtype != "auto":
        return None
    stored = checkpoint_bytes(model.safetensors_parameters)
    if stored is None:
        return None
    notes.append("weights: exact stored bytes from the checkpoint's safetensors headers")
    return stored - unloaded_bytes(model.spec, precision)
