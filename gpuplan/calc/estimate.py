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
                    weights_override: int | None = None) -> Breakdown:
    """``weights_override``: exact weight bytes known from elsewhere (the checkpoint's safetensors headers)."""
    weights = weights_bytes(spec, precision) if weights_override is None else weights_override
    mem = estimate_generate(spec, workload, precision, weights, attn)
    overhead = overhead_bytes(mem.largest_transient_bytes)
    return Breakdown(
        weights_bytes=mem.weights_bytes,
        kv_cache_bytes=mem.kv_cache_bytes,
        activation_bytes=mem.activation_bytes,
        overhead_bytes=overhead,
        peak_allocated_bytes=mem.peak_allocated_bytes,
        total_bytes=mem.peak_allocated_bytes + overhead,
        components={**mem.components, "allocator_slack": mem.largest_transient_bytes},
    )
