"""GPU catalog (data/gpus.yaml), name resolution and local NVML probing."""

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
from gpuplan.gpus.nvml import ProbedDevice, ProbeResult, probe

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
