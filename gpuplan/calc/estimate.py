"""The pure calculator: (ModelSpec, Workload, Precision, engine) -> Breakdown, all integers in bytes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpuplan.calc.overhead import overhead_bytes
from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import weights_bytes
from gpuplan.calc.workload import Workload
from gpuplan.engines.transformers import AttnImpl, estimate_generate
from gpuplan.models.spec import ModelSpec


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
    ``expandable_segments``: PyTorch's allocator runs with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,
    which grows segments in place: measured reserved memory then stays within 1.2% of allocated memory
    (tests/fixtures/measurements/verify-allocator-h200.jsonl), so no allocator slack is added."""
    weights = weights_bytes(spec, precision) if weights_override is None else weights_override
    mem = estimate_generate(spec, workload, precision, weights, attn)
    slack = 0 if expandable_segments else mem.largest_transient_bytes
    overhead = overhead_bytes(slack)
    return Breakdown(
        weights_bytes=mem.weights_bytes,
        kv_cache_bytes=mem.kv_cache_bytes,
        activation_bytes=mem.activation_bytes,
        overhead_bytes=overhead,
        peak_allocated_bytes=mem.peak_allocated_bytes,
        total_bytes=mem.peak_allocated_bytes + overhead,
        components={**mem.components, "allocator_slack": slack},
    )


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
        mem = estimate_generate(share_spec(spec, share), workload, precision, share.weights_bytes, attn,
                                holds_embedding=share.holds_embedding, holds_lm_head=share.holds_lm_head)
        slack = 0 if expandable_segments else mem.largest_transient_bytes
        overhead = overhead_bytes(slack)
        out.append(Breakdown(
            weights_bytes=mem.weights_bytes, kv_cache_bytes=mem.kv_cache_bytes,
            activation_bytes=mem.activation_bytes, overhead_bytes=overhead,
            peak_allocated_bytes=mem.peak_allocated_bytes, total_bytes=mem.peak_allocated_bytes + overhead,
            components={**mem.components, "allocator_slack": slack, "layers": share.layers,
                        "first_layer": share.first_layer},
        ))
    return out
