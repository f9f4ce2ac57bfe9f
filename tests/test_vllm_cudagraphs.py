"""The graphs vLLM's memory profiler captures (gpuplan/engines/vllm_cudagraphs.py), from the wheels' sources, and
the lines vLLM prints around its CUDA graph estimate, checked against public startup logs."""

from __future__ import annotations

import pytest

import gpuplan
from gpuplan.calc.precision import resolve_precision
from gpuplan.engines import vllm
from gpuplan.engines.vllm import GiB, vllm_budget
from gpuplan.engines.vllm_cudagraphs import (
    ProfiledGraphs,
    cudagraph_capture_sizes,
    graph_estimate,
    profiled_graphs,
    utilization_line,
)
from gpuplan.engines.vllm_releases import CUDA_GRAPH_ESTIMATE_BYTES, vllm_release
from gpuplan.models.sources import resolve_model

# config/vllm.py _set_cudagraph_sizes: [1, 2, 4] + range(8, 256, 8) + range(256, largest + 1, 16), the largest
# being min(max_num_seqs x 2, 512, max_num_batched_tokens); 0.21.0 adds max_num_batched_tokens itself.
_STRIDED_512 = (1, 2, 4, *range(8, 256, 8), *range(256, 513, 16))
SIZES = [
    # (release, max_num_seqs, max_num_batched_tokens, sizes)
    ("0.21.0", 256, 2048, _STRIDED_512),  # 51 sizes: the default on GPUs under 70 GiB
    ("0.21.0", 1024, 8192, _STRIDED_512),  # and over
    ("0.19.0", 1024, 8192, _STRIDED_512),
    ("0.21.0", 1, 8192, (1, 2)),
    ("0.21.0", 8, 8192, (1, 2, 4, 8, 16)),
    ("0.21.0", 100, 8192, (1, 2, 4, *range(8, 201, 8))),
    ("0.21.0", 200, 8192, (1, 2, 4, *range(8, 256, 8), *range(256, 401, 16))),
    # max_num_batched_tokens under the ceiling caps it, and from 0.21.0 is captured off the stride.
    ("0.21.0", 256, 100, (1, 2, 4, *range(8, 97, 8), 100)),
    ("0.20.0", 256, 100, (1, 2, 4, *range(8, 97, 8))),
    ("0.19.0", 256, 100, (1, 2, 4, *range(8, 97, 8))),
    ("0.24.0", 256, 300, (1, 2, 4, *range(8, 256, 8), 256, 272, 288, 300)),
    ("0.21.0", 256, 3, (1, 2, 3)),
]


@pytest.mark.parametrize(("release", "seqs", "tokens", "sizes"), SIZES)
def test_capture_sizes_follow_the_release(release, seqs, tokens, sizes):
    assert cudagraph_capture_sizes(vllm_release(release), seqs, tokens) == sizes


GRAPHS = [
    # (release, max_num_seqs, max_num_batched_tokens, line printed)
    # LMCache/LMCache#3430: vLLM 0.21.0, Qwen3-8B on a 24 GB RTX A5000, default limits (256 sequences).
    ("0.21.0", 256, 8192, "Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)"),
    # 1024 sequences (GPUs of 70 GiB and more): every size is a decode size too.
    ("0.19.0", 1024, 8192, "Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=51 (largest=512)"),
    ("0.24.0", 256, 2048, "Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)"),
    ("0.21.0", 8, 8192, "Profiling CUDA graph memory: PIECEWISE=5 (largest=16), FULL=4 (largest=8)"),
]


@pytest.mark.parametrize(("release", "seqs", "tokens", "line"), GRAPHS)
def test_profiled_graphs_line(release, seqs, tokens, line):
    assert profiled_graphs(vllm_release(release), seqs, tokens).log_line == line


def test_a_mode_without_graphs_is_left_out_of_the_line():
    assert ProfiledGraphs(piecewise=7, piecewise_largest=32, full=0, full_largest=0).log_line == \
        "Profiling CUDA graph memory: PIECEWISE=7 (largest=32)"


@pytest.mark.parametrize("release", ["0.18.0", "0.34.0"])
def test_profilers_not_read_are_not_modelled(release):
    assert profiled_graphs(vllm_release(release), 256, 2048) is None


def _qwen25_7b():
    spec = resolve_model("Qwen/Qwen2.5-7B-Instruct").spec
    return spec, resolve_precision(spec)


def _graph_lines(budget) -> list[str]:
    return [line for line in budget.log_lines if "CUDA graph" in line]


def test_budget_prints_the_profiler_lines_in_vllm_order():
    # RTX 4090 defaults of the API server (256 sequences, 2048 tokens): the graphs of the LMCache#3430 log.
    spec, p = _qwen25_7b()
    total = int(23.64 * GiB)  # the RTX 4090 CUDA total of data/gpus.yaml
    b = vllm_budget(spec, p, total, engine_version="0.24.0", max_model_len=2048, gpu_memory_utilization=0.85,
                    gpu_name="RTX 4090")
    lines = list(b.log_lines)
    start = lines.index("Profiling CUDA graph memory: PIECEWISE=51 (largest=512), FULL=35 (largest=256)")
    assert lines[start - 1].startswith("Model loading took")
    assert lines[start + 1] == f"Estimated CUDA graph memory: {CUDA_GRAPH_ESTIMATE_BYTES / GiB:.2f} GiB total"
    assert lines[start + 2].startswith("Available KV cache memory:")
    delta = CUDA_GRAPH_ESTIMATE_BYTES / total
    assert lines[start + 3] == (
        "CUDA graph memory profiling is enabled (default since v0.21.0). The current --gpu-memory-utilization="
        f"0.8500 is equivalent to --gpu-memory-utilization={round(0.85 - delta, 4):.4f} without CUDA graph "
        "memory profiling. To maintain the same effective KV cache size as before, increase "
        f"--gpu-memory-utilization to {round(0.85 + delta, 4):.4f}. To disable, set "
        "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0.")
    assert lines[start + 4].startswith("GPU KV cache size:")


# gpu_worker.py determine_available_memory (0.20.0-0.24.0): logged (estimate GiB, CUDA total GiB, utilization,
# equivalent, suggested). The estimate is printed to 0.01 GiB, so the figures are checked at both ends of its
# rounding: one of them must print the logged line's figures.
UTILIZATION_LINES = [
    # vllm-project/vllm#50722: H100, 79.33 GiB CUDA total ("Free memory on device (77.78/79.33 GiB)" in the issue).
    (2.22, 79.33, 0.85, "0.8221", "0.8779"),
    # noonghunna/club-3090#127: RTX 3090s; the log prints no CUDA total, an RTX 3090's is 23.58 GiB
    # (total_gpu_memory=23.58GiB, vllm-project/vllm#10517 in tests/fixtures/serving_logs.yaml).
    (0.17, 23.58, 0.92, "0.9129", "0.9271"),
]


@pytest.mark.parametrize(("estimate", "total", "util", "equivalent", "suggested"), UTILIZATION_LINES)
def test_utilization_line_matches_logged_values(estimate, total, util, equivalent, suggested):
    expected = (f"--gpu-memory-utilization={util:.4f} is equivalent to --gpu-memory-utilization={equivalent} "
                f"without CUDA graph memory profiling. To maintain the same effective KV cache size as before, "
                f"increase --gpu-memory-utilization to {suggested}.")
    printed = {utilization_line(util, round((estimate + end) * GiB), round(total * GiB))
               for end in (-0.005, -0.0025, 0.0, 0.0025, 0.005)}
    assert any(expected in line for line in printed)


def test_utilization_suggestion_stops_at_one():
    assert "increase --gpu-memory-utilization to 1.0000." in utilization_line(0.99, 2 * GiB, 80 * GiB)


def test_no_graph_lines_before_0_20_nor_with_a_fixed_kv_cache_nor_in_0_34():
    spec, p = _qwen25_7b()
    kw = {"max_model_len": 4096, "gpu_name": "H100"}
    assert _graph_lines(vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.19.0", **kw)) == []
    assert _graph_lines(vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.24.0", kv_cache_memory=20 * GiB,
                                    **kw)) == []
    assert _graph_lines(vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.34.0", **kw)) == []
    assert len(_graph_lines(vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.20.0", **kw))) == 3


# (release, enforce_eager, cuda_platform, charged): gpu_worker.py determine_available_memory profiles the graphs
# only on CUDA and when cudagraph_mode is not NONE (0.20.0-0.24.0); 0.34.0 profiles on CUDA, ROCm and XPU, and
# its profile_cudagraph_memory returns 0 when nothing is captured.
CHARGED = [
    ("0.24.0", False, True, CUDA_GRAPH_ESTIMATE_BYTES),
    ("0.24.0", True, True, 0),
    ("0.24.0", False, False, 0),
    ("0.20.0", False, False, 0),
    ("0.34.0", False, False, CUDA_GRAPH_ESTIMATE_BYTES),
    ("0.34.0", True, True, 0),
]


@pytest.mark.parametrize(("release", "eager", "cuda", "charged"), CHARGED)
def test_graph_estimate_per_release_and_platform(release, eager, cuda, charged):
    assert graph_estimate(vllm_release(release), enforce_eager=eager, cuda_platform=cuda) == charged
    spec, p = _qwen25_7b()
    kw = {"max_model_len": 4096, "gpu_name": "H100", "engine_version": release}
    base = vllm_budget(spec, p, int(79.19 * GiB), **kw)
    b = vllm_budget(spec, p, int(79.19 * GiB), enforce_eager=eager, cuda_platform=cuda, **kw)
    assert (b.cuda_graph or 0) == charged
    gained = b.available_kv - base.available_kv
    if release == "0.34.0":  # the extensible KV cache's margin and transient peak move with the graphs as well
        assert (gained > 0) == (charged == 0)
    else:
        assert gained == CUDA_GRAPH_ESTIMATE_BYTES - charged
    assert len(_graph_lines(b)) == (3 if charged and release != "0.34.0" else 0)


def test_graphs_not_captured_leave_the_kv_cache_memory_suggestion():
    spec, p = _qwen25_7b()
    kw = {"max_model_len": 4096, "gpu_name": "H100", "engine_version": "0.24.0"}
    graphs = vllm_budget(spec, p, int(79.19 * GiB), **kw)
    eager = vllm_budget(spec, p, int(79.19 * GiB), enforce_eager=True, **kw)
    rocm = vllm_budget(spec, p, int(79.19 * GiB), cuda_platform=False, **kw)
    # The suggestion counts the graphs captured after sizing: none when eager, the same ones off CUDA.
    assert [e - g for e, g in zip(eager.kv_cache_memory_suggested, graphs.kv_cache_memory_suggested, strict=True)] == \
        [CUDA_GRAPH_ESTIMATE_BYTES] * 2
    assert rocm.kv_cache_memory_suggested == graphs.kv_cache_memory_suggested


def test_enforce_eager_reaches_the_estimate_and_the_launch_command():
    model = "Qwen/Qwen2.5-7B-Instruct"
    plain = gpuplan.estimate(model, engine="vllm", gpu="RTX 4090", max_model_len=2048, engine_version="0.24.0")
    eager = gpuplan.estimate(model, engine="vllm", gpu="RTX 4090", max_model_len=2048, engine_version="0.24.0",
                             enforce_eager=True)
    assert eager.serving.kv_cache_tokens > plain.serving.kv_cache_tokens
    cmd = vllm.launch_command(model, eager, nodes=1, dtype=None, kv_cache_dtype=None,
                              options=vllm.Options(enforce_eager=True))
    assert cmd[0].endswith(" --enforce-eager")
    # AMD GPUs: 0.20-0.33 estimate nothing off CUDA.
    mi300 = gpuplan.estimate(model, engine="vllm", gpu="MI300X", max_model_len=2048, engine_version="0.24.0")
    assert not [line for line in mi300.serving.log_lines if "CUDA graph" in line]
