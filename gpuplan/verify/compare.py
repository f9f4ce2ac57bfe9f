"""Estimate vs measurement, for `gpuplan verify`, the accuracy report and the replay tests.

Pure code (no torch): a measurement is the dict that ``gpuplan/verify/measure.py`` records, one JSON line
per case in tests/fixtures/measurements/. Measured figures are taken relative to the process's state
before the model was built, plus the cuBLAS workspace every process allocates on its first matmul, so
that they compare with a fresh process's ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.calc.overhead import NON_TORCH_BYTES
from gpuplan.data_files import data_dir
from gpuplan.engines.transformers import SLIDING_WINDOW_SCALAR_BYTES
from gpuplan.models.sources import parse_config, read_json_file
from gpuplan.models.spec import ModelSpec
from gpuplan.results import EstimateResult


class ComponentComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    component: str
    estimated_bytes: int
    measured_bytes: int

    @property
    def error(self) -> float:
        """Relative error, (estimate - measured) / measured: negative means an under-estimate."""
        return (self.estimated_bytes - self.measured_bytes) / self.measured_bytes if self.measured_bytes else 0.0


class GpuComparison(BaseModel):
    """One GPU of a model spread over several (``gpuplan verify --gpus N``)."""

    model_config = ConfigDict(frozen=True)

    index: int
    estimated_layers: int
    measured_layers: int
    weights: ComponentComparison
    kv_cache: ComponentComparison
    peak_allocated: ComponentComparison
    device_used: ComponentComparison | None = None


class CaseComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    case_id: str
    model: str
    model_type: str
    dtype: str
    attn: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    oom: bool = False
    oom_phase: str | None = None
    oom_allocated_bytes: int | None = Field(default=None, description="torch allocations when memory ran out")
    estimate: EstimateResult
    weights: ComponentComparison | None = None
    kv_cache: ComponentComparison | None = None
    peak_allocated: ComponentComparison | None = None
    peak_reserved: ComponentComparison | None = None
    device_used: ComponentComparison | None = None
    gpus: int = 1
    per_gpu: list[GpuComparison] | None = Field(
        default=None, description="each GPU of a split model; the top-level comparisons are then those of the GPU "
                                  "the estimate finds most loaded")

    @property
    def error(self) -> float:
        """The peak's relative error; over several GPUs, the one farthest off (every GPU must fit)."""
        if self.per_gpu:
            return max((g.peak_allocated.error for g in self.per_gpu), key=abs)
        return self.peak_allocated.error if self.peak_allocated else 0.0


def measured_config(row: dict[str, Any]) -> dict[str, Any]:
    """The config a case was measured with: its file plus the recorded overrides (None removes a key).

    ``config_file`` is recorded relative to the repository ("data/models/..."); the bundled data directory
    holds the same files in a checkout and in an installed wheel."""
    relative = Path(row["config_file"])
    if relative.parts and relative.parts[0] == "data":
        relative = Path(*relative.parts[1:])
    raw = read_json_file(data_dir() / relative)
    for key, value in (row.get("config_overrides") or {}).items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def measured_release(row: dict[str, Any]) -> str | None:
    """The transformers release a row was measured with (its ``versions``), when gpuplan models that release;
    else None (the default release)."""
    from gpuplan.engines.transformers_releases import NEWEST, OLDEST
    from gpuplan.engines.vllm_releases import parse_release

    recorded = (row.get("versions") or {}).get("transformers")
    try:
        return recorded if recorded and OLDEST <= parse_release(recorded) <= NEWEST else None
    except ValueError:
        return None


def estimate_for(row: dict[str, Any], spec: ModelSpec | None = None) -> EstimateResult:
    from gpuplan.api import estimate

    if spec is None:
        spec = parse_config(measured_config(row), label=row["model_id"])
    seq = row["prompt_tokens"] + row["new_tokens"]
    return estimate(spec, dtype=row["dtype"], batch=row["batch"], seq=seq, new_tokens=row["new_tokens"],
                    attn=row["attn"], pipeline_parallel=row.get("gpus") or 1, engine_version=measured_release(row))


def compare(row: dict[str, Any], estimate: EstimateResult | None = None,
            spec: ModelSpec | None = None) -> CaseComparison:
    """One measured row against its estimate (computed from the row's recorded config when not given).
    ``spec`` (the model measured) lets a split case leave each GPU's sliding-window scalars out of its KV."""
    if spec is None and row.get("config_file") and (row.get("gpus") or 1) > 1:
        spec = parse_config(measured_config(row), label=row["model_id"])
    est = estimate or estimate_for(row, spec)
    common = {
        "case_id": row["case_id"], "model": row["model_id"], "model_type": row["model_type"], "dtype": row["dtype"],
        "attn": row["attn"], "batch": row["batch"], "prompt_tokens": row["prompt_tokens"],
        "new_tokens": row["new_tokens"], "estimate": est,
    }
    if row.get("oom"):
        return CaseComparison(**common, oom=True, oom_phase=row.get("oom_phase"), gpus=row.get("gpus") or 1,
                              oom_allocated_bytes=row.get("oom_max_allocated") or row.get("oom_allocated"))
    if (row.get("gpus") or 1) > 1:
        return _compare_split(row, est, common, spec)
    before = row["allocated_before_build"]
    workspace = row["context"]["allocated_after_warmup"]
    rebase = before - workspace  # what earlier cases left allocated beyond the workspace
    # What the allocator reserves on this card, which has room to spare (the simulated peak reservation), and
    # what nvidia-smi then shows; total_bytes is the smaller card on which the run still completes.
    est_reserved = est.components.get("reserved_on_larger_card",
                                      est.peak_allocated_bytes + est.components.get("allocator_slack", 0))
    process_used = row["nvml_used_peak"] - row["context"]["nvml_used_before_cuda_init"]
    sliding_layers = sum(n for kind, n in (row.get("kv_cache_layer_classes") or {}).items() if "Sliding" in kind)
    window_scalars = sliding_layers * SLIDING_WINDOW_SCALAR_BYTES
    return CaseComparison(
        **common,
        weights=ComponentComparison(component="weights", estimated_bytes=est.weights_bytes,
                                    measured_bytes=row["weights_allocated"] - before),
        kv_cache=ComponentComparison(component="kv_cache", estimated_bytes=est.kv_cache_bytes,
                                     measured_bytes=row["kv_cache_storage_bytes"] - window_scalars),
        peak_allocated=ComponentComparison(component="peak_allocated", estimated_bytes=est.peak_allocated_bytes,
                                           measured_bytes=row["peak_allocated"] - rebase),
        peak_reserved=ComponentComparison(component="peak_reserved", estimated_bytes=est_reserved,
                                          measured_bytes=row["peak_reserved"] - rebase),
        device_used=ComponentComparison(component="device_used", estimated_bytes=est_reserved + NON_TORCH_BYTES,
                                        measured_bytes=process_used),
    )


def _compare_split(row: dict[str, Any], est: EstimateResult, common: dict[str, Any],
                   spec: ModelSpec | None) -> CaseComparison:
    """Each GPU's estimate (``per_gpu``) against that GPU's torch counters, rebased as for one GPU: what the
    process held there before the build, beyond the cuBLAS workspace of its warm-up."""
    assert est.per_gpu is not None, "a split measurement needs a split estimate (pipeline_parallel = gpus)"
    gpus = []
    for built, run, context, share in zip(row["per_gpu_build"], row["per_gpu"], row["contexts"], est.per_gpu,
                                          strict=True):
        before = built["allocated_before_build"]
        rebase = before - context["allocated_after_warmup"]
        used = None
        if run.get("nvml_used_peak") is not None and context.get("nvml_used_before_cuda_init") is not None:
            used = ComponentComparison(component="device_used", estimated_bytes=share.total_bytes,
                                       measured_bytes=run["nvml_used_peak"] - context["nvml_used_before_cuda_init"])
        window_scalars = 0
        if spec is not None and built["first_layer"] is not None:
            held = spec.layer_windows[built["first_layer"]:built["first_layer"] + built["layers"]]
            window_scalars = sum(w is not None for w in held) * SLIDING_WINDOW_SCALAR_BYTES
        gpus.append(GpuComparison(
            index=share.index, estimated_layers=share.layers, measured_layers=built["layers"],
            weights=ComponentComparison(component="weights", estimated_bytes=share.weights_bytes,
                                        measured_bytes=built["weights_allocated"] - before),
            kv_cache=ComponentComparison(component="kv_cache", estimated_bytes=share.kv_cache_bytes,
                                         measured_bytes=run["kv_cache_storage_bytes"] - window_scalars),
            peak_allocated=ComponentComparison(component="peak_allocated",
                                               estimated_bytes=share.peak_allocated_bytes,
                                               measured_bytes=run["peak_allocated"] - rebase),
            device_used=used,
        ))
    top = max(range(len(gpus)), key=lambda i: est.per_gpu[i].total_bytes)  # type: ignore[index]
    return CaseComparison(**common, gpus=len(gpus), per_gpu=gpus, weights=gpus[top].weights,
                          kv_cache=gpus[top].kv_cache, peak_allocated=gpus[top].peak_allocated,
                          device_used=gpus[top].device_used)


def load_measurements(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
