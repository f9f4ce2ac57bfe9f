"""Memory on the GPU outside torch's tensors: the CUDA context, library workspaces, allocator slack.

``peak_allocated_bytes`` is what ``torch.cuda.max_memory_allocated`` reads; the card must also hold what
the driver and libraries take for themselves, which ``nvidia-smi`` shows on top.
"""

from __future__ import annotations

from gpuplan.units import MiB

# CUDA context + cuBLAS/cuDNN handles and workspaces of one process using torch on an H200 (torch 2.11,
# CUDA 13): ../shared/reference/FORMULAS.md gives "about 0.5 GiB"; refined from measurements in
# tests/fixtures/measurements/ (see docs/accuracy.md).
CUDA_CONTEXT_BYTES = 512 * MiB


def overhead_bytes() -> int:
    return CUDA_CONTEXT_BYTES
