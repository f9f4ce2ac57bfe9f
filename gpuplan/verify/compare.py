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

    @property
    def error(self) -> float:
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


def estimate_for(row: dict[str, Any], spec: ModelSpec | None = None) -> EstimateResult:
    from gpuplan.api import estimate

    if spec is None:
        spec = parse_config(measured_config(row), label=row["model_id"])
    seq = row["prompt_tokens"] + row["new_tokens"]
    return estimate(spec, dtype=row["dtype"], batch=row["batch"], seq=seq, new_tokens=row["new_tokens"],
                    attn=row["attn"])


def compare(row: dict[str, Any], estimate: EstimateResult | None = None) -> CaseComparison:
    est = estimate or estimate_for(row)
    common = {
        "case_id": row["case_id"], "model": row["model_id"], "model_type": row["model_type"], "dtype": row["dtype"],
        "attn": row["attn"], "batch": row["batch"], "prompt_tokens": row["prompt_tokens"],
        "new_tokens": row["new_tokens"], "estimate": est,
    }
    if row.get("oom"):
        return CaseComparison(**common, oom=True, oom_phase=row.get("oom_phase"),
                              oom_allocated_bytes=row.get("oom_max_allocated") or row.get("oom_allocated"))
    before = row["allocated_before_build"]
    workspace = row["context"]["allocated_after_warmup"]
    rebase = before - workspace  # what earlier cases left allocated beyond the workspace
    est_reserved = est.peak_allocated_bytes + est.components.get("allocator_slack", 0)
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
        device_used=ComponentComparison(component="device_used", estimated_bytes=est.total_bytes,
                                        measured_bytes=process_used),
    )


def load_measurements(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
