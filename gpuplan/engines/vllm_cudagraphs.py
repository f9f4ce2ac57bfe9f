"""The CUDA graphs vLLM's memory profiler captures to estimate their memory (0.19-0.33), read in the wheels.

What the sources decide, and gpuplan derives (docs/serving.md, "CUDA graph estimate"):

* The capture sizes (``VllmConfig._set_cudagraph_sizes``, ``config/vllm.py`` 0.19.0, 0.20.0, 0.21.0, 0.24.0):
  the largest is ``min(max_num_seqs x 2, 512, max_num_batched_tokens)`` (x (1 + speculative tokens), not
  modelled); the sizes are 1, 2, 4, the multiples of 8 below 256, then the multiples of 16 up to the largest;
  from 0.21.0 ``max_num_batched_tokens`` is added when it is not above the largest and not already there.
* The graphs (``CudagraphDispatcher.initialize_cudagraph_keys``, ``v1/cudagraph_dispatcher.py`` 0.21.0): under
  the default ``FULL_AND_PIECEWISE`` mode a PIECEWISE graph for every size, and a FULL decode graph for every size
  up to ``max_num_seqs`` (x the decode query length). Backends without FULL decode graphs, speculative decoding on
  FlashInfer among them, fall back to PIECEWISE alone: not modelled.
* The estimate (``GPUModelRunner.profile_cudagraph_memory``, ``v1/worker/gpu_model_runner.py``, the same function
  in 0.19.0, 0.20.0 and 0.21.0; 0.24.0 adds the multimodal encoder's graphs): per mode, the free-memory drop
  (``torch.cuda.mem_get_info``) of warming up and capturing the largest graph (``first``) and the second largest
  (``per_graph``, at least 1 MiB); ``total = max(first over modes) + sum over modes of per_graph x (graphs - 1)``.

What they do not decide: ``first`` and ``per_graph`` themselves. They are the driver's free memory, so they count
the graph pool's segments, the allocator blocks the warm-up leaves cached, the kernels that lazy module loading
brings in on first use and the memory of each instantiated graph (its kernel nodes): the kernels picked
(quantization, attention backend, fused MoE, torch.compile's fusion) move them, not the config alone. Logs with
identical graph counts show it: 0.52 to 1.82 GiB for 51 + 51 graphs on H100 (vLLM 0.19.0, sixteen logs in
tests/fixtures/serving_logs.yaml), 0.52 GiB (Qwen3-8B, LMCache/LMCache#3430) and 1.62 GiB (a Qwen3.5 GGUF,
vllm-project/vllm#39559) for 51 + 35. The amount stays a measured constant
(gpuplan.engines.vllm_releases.CUDA_GRAPH_ESTIMATE_BYTES); this module gives the graphs it is measured over.

0.34.0 runs the estimate in the new model runner (``v1/worker/gpu/cudagraph_utils.py``
``profile_cudagraph_memory``): every PIECEWISE graph is captured and measured, the FULL ones extrapolated from
two samples as before, from separate prefill and decode size lists; that layout is not modelled here.
"""

from __future__ import annotations

from typing import NamedTuple

from gpuplan.engines.vllm_releases import CUDA_GRAPH_ESTIMATE_BYTES, VllmRelease, parse_release

# config/vllm.py _set_cudagraph_sizes (0.19.0-0.24.0): max_cudagraph_capture_size = min(max_num_seqs x
# decode_query_len x 2, 512); sizes [1, 2, 4] + range(8, 256, 8) + range(256, largest + 1, 16).
DEFAULT_MAX_CAPTURE_SIZE = 512
_SEQS_FACTOR = 2
_FINE_STEP, _FINE_END = 8, 256
_COARSE_STEP = 16
# The releases whose capture sizes and profiler were read: 0.19.0 (first), 0.21.0 adds max_num_batched_tokens
# to the sizes (absent in 0.19.0 and 0.20.0); 0.34.0 has another runner (not modelled).
FIRST_PROFILED = (0, 19, 0)
BATCHED_TOKENS_CAPTURED = (0, 21, 0)
NEW_RUNNER = (0, 34, 0)


class ProfiledGraphs(NamedTuple):
    """The graphs ``profile_cudagraph_memory`` extrapolates over, per mode: how many and the largest size."""

    piecewise: int
    piecewise_largest: int
    full: int
    full_largest: int

    @property
    def log_line(self) -> str:
        """gpu_model_runner.py (0.19.0-0.24.0): ``Profiling CUDA graph memory: PIECEWISE=N (largest=L), ...``,
        PIECEWISE first, a mode with no graph left out."""
        parts = [f"{mode}={n} (largest={largest})" for mode, n, largest in
                 (("PIECEWISE", self.piecewise, self.piecewise_largest), ("FULL", self.full, self.full_largest))
                 if n]
        return "Profiling CUDA graph memory: " + ", ".join(parts)


def captured_graph_bytes(enforce_eager: bool) -> int:
    """The memory of the graphs vLLM captures after sizing the KV cache: none with ``--enforce-eager``
    (``cudagraph_mode`` NONE), else the measured constant."""
    return 0 if enforce_eager else CUDA_GRAPH_ESTIMATE_BYTES


def graph_estimate(release: VllmRelease, *, enforce_eager: bool = False, cuda_platform: bool = True) -> int:
    """The CUDA graph estimate a 0.20+ release charges before the KV cache: 0 with ``--enforce-eager`` (0.20-0.33
    gpu_worker.py ``determine_available_memory`` profiles only when ``cudagraph_mode != NONE``; 0.34
    ``profile_cudagraph_memory`` returns 0 when nothing is captured), and 0 off CUDA in 0.20-0.33 (the same
    function profiles only when ``current_platform.is_cuda()``: "Skip on ROCm/HIP/XPU", 0.20.0-0.24.0; 0.34
    profiles on CUDA, ROCm and XPU)."""
    if release.budget_rule == "cuda_graph" and not cuda_platform:
        return 0
    return captured_graph_bytes(enforce_eager)


def cudagraph_capture_sizes(release: VllmRelease, max_num_seqs: int, max_num_batched_tokens: int
                            ) -> tuple[int, ...]:
    """The default ``cudagraph_capture_sizes`` of a 0.19-0.33 release, ascending (no speculative decoding)."""
    largest = min(max_num_seqs * _SEQS_FACTOR, DEFAULT_MAX_CAPTURE_SIZE, max_num_batched_tokens)
    sizes = {s for s in (1, 2, 4) if s <= largest}
    if largest >= _FINE_STEP:
        sizes.update(range(_FINE_STEP, min(largest + 1, _FINE_END), _FINE_STEP))
    if largest >= _FINE_END:
        sizes.update(range(_FINE_END, largest + 1, _COARSE_STEP))
    if parse_release(release.version) >= BATCHED_TOKENS_CAPTURED and max_num_batched_tokens <= largest:
        sizes.add(max_num_batched_tokens)
    return tuple(sorted(sizes))


def profiled_graphs(release: VllmRelease, max_num_seqs: int, max_num_batched_tokens: int
                    ) -> ProfiledGraphs | None:
    """The graphs the memory profiler captures under ``FULL_AND_PIECEWISE`` with a backend that has FULL decode
    graphs; None for releases whose profiler is not modelled (before 0.19, or the 0.34 runner)."""
    if not FIRST_PROFILED <= parse_release(release.version) < NEW_RUNNER:
        return None
    sizes = cudagraph_capture_sizes(release, max_num_seqs, max_num_batched_tokens)
    decode = [s for s in sizes if s <= max_num_seqs]  # uniform decode, one query token per request
    return ProfiledGraphs(piecewise=len(sizes), piecewise_largest=sizes[-1], full=len(decode),
                          full_largest=decode[-1] if decode else 0)


def utilization_line(gpu_memory_utilization: float, estimate: int, total_gpu_memory: int) -> str:
    """gpu_worker.py ``determine_available_memory`` (the same text in 0.20.0, 0.21.0 and 0.24.0), printed after
    "Available KV cache memory" when the estimate is charged: the utilization that gives the same pool without
    the estimate, and the one that keeps the pool of before; the estimate as a fraction of the CUDA total, each
    rounded to 4 places (the suggestion at most 1.0)."""
    util, delta = gpu_memory_utilization, estimate / total_gpu_memory
    return ("CUDA graph memory profiling is enabled (default since v0.21.0). The current "
            f"--gpu-memory-utilization={util:.4f} is equivalent to --gpu-memory-utilization="
            f"{round(util - delta, 4):.4f} without CUDA graph memory profiling. To maintain the same effective KV "
            f"cache size as before, increase --gpu-memory-utilization to {min(round(util + delta, 4), 1.0):.4f}. "
            "To disable, set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0.")
