"""Memory on the GPU outside the tensors torch counts as allocated.

``peak_allocated_bytes`` is what ``torch.cuda.max_memory_allocated`` reads. What ``nvidia-smi`` shows for
the process adds two things, both measured on an H200 (tests/fixtures/measurements/, docs/accuracy.md):

* memory outside torch's caching allocator: the CUDA context, the kernels CUDA loads lazily as they are
  first used, cuBLAS/cuDNN handles. Process usage (NVML) minus torch's peak reserved memory was
  730.7 to 814.5 MiB over the 163 measured cases (torch 2.11, CUDA 13, driver 580), median 770,506,752
  bytes: ``NON_TORCH_BYTES``.
* the caching allocator's slack: segments it keeps reserved after a temporary tensor is freed, which a
  later request of another size cannot reuse (c10/cuda/CUDACachingAllocator.cpp). For generate() it is
  simulated (gpuplan/calc/allocator.py), and so is a one-GPU training run (gpuplan/calc/training_allocations.py);
  sharded training estimates it as the largest single temporary tensor;
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True lets segments grow in place and removes most of it.
"""

from __future__ import annotations

from gpuplan.units import MiB

# Median over the fixtures of nvml_used_peak - nvml_used_before_cuda_init - peak_reserved; a test checks
# it against the recorded measurements (tests/test_accuracy.py).
NON_TORCH_BYTES = 770_506_752

# A single-GPU training process loads more kernels than generate() does (the backward pass, the optimizer's
# foreach kernels): memory outside torch's allocator in the 11 training runs of
# tests/fixtures/measurements/min-memory-training-fresh-h100.jsonl was 804,061,184 to 810,352,640 bytes, median
# 808,255,488 (mem_get_info used - memory_reserved, each run from a fresh allocator; a test checks the median).
TRAINING_NON_TORCH_BYTES = 808_255_488

# cuBLAS workspace that torch allocates through its caching allocator on the first matmul: 32 MiB on
# Hopper (aten/src/ATen/cuda/CublasHandlePool.cpp, default CUBLAS_WORKSPACE_CONFIG); measured as
# allocated_after_warmup = 33,554,432 bytes on the H200.
CUBLAS_WORKSPACE_BYTES = 32 * MiB


def overhead_bytes(largest_transient_bytes: int = 0) -> int:
    """Bytes the card holds beyond torch's allocated peak: non-torch memory plus allocator slack."""
    return NON_TORCH_BYTES + largest_transient_bytes


def expandable_segments_from_env() -> bool:
    """PyTorch's allocator grows segments in place when PYTORCH_CUDA_ALLOC_CONF says expandable_segments:True
    (the one place gpuplan reads that variable)."""
    import os

    return "expandable_segments:true" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").lower()
