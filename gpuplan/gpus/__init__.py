"""GPU catalog (data/gpus.yaml), name resolution and local NVML probing."""

from typing import Any

from gpuplan.gpus.catalog import (
    BINARY_PREFIX,
    MARKETED,
    GpuCatalog,
    GpuSpec,
    custom_gpu,
    data_path,
    load_catalog,
    normalize_gpu_name,
)

# The probe's names, imported on first use: a plan reads the catalog on every run but probes the local GPUs
# only for `gpuplan gpus --probe` (its module defines its own models, which a plan would build for nothing).
_NVML_NAMES = ("ProbeResult", "ProbedDevice", "probe")

__all__ = [
    "BINARY_PREFIX",
    "MARKETED",
    "GpuCatalog",
    "GpuSpec",
    "ProbeResult",
    "ProbedDevice",
    "custom_gpu",
    "data_path",
    "load_catalog",
    "normalize_gpu_name",
    "probe",
]


def __getattr__(name: str) -> Any:
    if name in _NVML_NAMES:
        from gpuplan.gpus import nvml

        return getattr(nvml, name)
    raise AttributeError(f"module 'gpuplan.gpus' has no attribute {name!r}")
