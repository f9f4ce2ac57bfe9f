"""vLLM releases: what each one charges before the KV cache, its defaults and its profile run.

Every rule below was read in the wheel of the release named beside it (``pip download vllm==X --no-deps``,
files under ``vllm/``); a range's first release is the first wheel read that has the rule, its last the last
read before the next rule. docs/serving.md has the table with the files.

KV budget per release (``available`` is what the KV cache gets, ``requested = total x utilization``):

* 0.2.5-0.3.0, ``total_used``: ``available = requested - (total - free after profile_run)`` (0.2.5 and 0.3.0
  ``worker/worker.py`` ``profile_num_available_blocks``): everything in use on the GPU is charged, the CUDA
  context, other processes, NCCL and the allocator's cached blocks included.
* 0.3.1-0.6.3, ``reserved_peak``: ``peak = init_free - free after profile_run`` (0.3.1, 0.3.3, 0.6.3
  ``worker/worker.py``): the CUDA context and other processes (in use before ``init_gpu_memory``) are not
  charged; NCCL (initialised after that snapshot) is, and so is every segment torch's allocator reserved
  during the profile run, since free memory is read before ``empty_cache``: the activation charged is the
  profile run's reserved peak (gpuplan.engines.vllm_v0_reserved, for the modules written out there).
* 0.6.4, and the V1 engine of 0.7.0-0.9.0, ``allocated_peak``: ``allocated_bytes.all.peak`` plus ``used -
  torch allocated`` after ``empty_cache`` (0.6.4 ``worker/worker.py`` and 0.7.0 / 0.8.5 / 0.9.0
  ``v1/worker/gpu_worker.py`` ``determine_available_memory``): the context and other processes are charged
  again.
* 0.6.5-0.10.2 (V0) and 0.9.1-0.19 (V1), ``snapshot``: ``weights + torch peak increase + non-torch
  increase`` since a snapshot taken after the CUDA context (0.6.6 ``utils.py`` ``memory_profiling``; 0.9.1,
  0.10.2, 0.11.0, 0.19.0 ``utils/mem_utils.py``).
* 0.20-0.33, ``cuda_graph``: the same, minus an estimate of the CUDA graphs' memory measured by a throwaway
  capture (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` defaults to 1 in the 0.20.0 ``envs.py``, 0 in
  0.19.0; the log line says "default since v0.21.0"), on CUDA only and not with ``--enforce-eager``
  (gpuplan.engines.vllm_cudagraphs); ``gpu_memory_utilization`` defaults to 0.92
  (``config/cache.py`` 0.20.0). From 0.27 ``memory_profiling`` charges ``total_consumed +
  transient_peak_headroom`` (``utils/mem_utils.py`` 0.27.1), the same quantities measured from free memory.
* 0.34, ``extensible``: the KV cache is reserved as virtual memory and committed after warm-up and CUDA
  graph capture (``v1/worker/extensible_kv_cache.py`` ``measure_kv_cache_bytes``, default on CUDA,
  ``config/cache.py`` ``enable_extensible_kv_cache``): ``available = min(requested - used, free + committed
  - margin) - transient_peak`` with ``margin = max(1 GiB, 0.75 x transient_peak)``; utilization defaults to
  1.0 and ``block_size`` to 64 (``CacheConfig.DEFAULT_BLOCK_SIZE``, 16 in 0.33.0).
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from gpuplan.errors import InputError

GiB = 1024**3
MiB = 1024**2

BudgetRule = Literal["total_used", "reserved_peak", "allocated_peak", "snapshot", "cuda_graph", "extensible"]
Engine = Literal["v1", "v0"]
ProfileLogits = Literal["sampler", "all_tokens", "per_request"]
SamplerKind = Literal["in_place", "sort", "flashinfer"]
FlashInferCall = Literal["from_probs", "from_logits"]
BatchDefaults = Literal["v1_h100_name", "v1_70gib", "v1_70gib_not_a100", "v1_160gib"]
TokenReport = Literal["blocks", "blocks_per_group", "concurrency"]

# Non-torch memory at TP=1 under the snapshot rules: vLLM 0.19.0 printed 0.25-0.26 GiB on an H100 for six
# models (llm-d-incubation/llm-d-planner accuracy/results/v0.19.0/logs @ d3121e0); V0 logs of 2024-2025 print
# 0.16-0.43 GiB (tests/fixtures/serving_logs.yaml). A measurement, not derived from the config.
SNAPSHOT_NON_TORCH_BYTES = GiB // 4
# With tensor parallelism the workers also hold communication buffers (NCCL, custom all-reduce), counted as
# non-torch memory: vLLM 0.19.0 printed 2.06-2.21 GiB per GPU at TP=2 and TP=4 on H100 in eight runs
# (tests/fixtures/serving_logs.yaml); the median. NVLink topology and NCCL version move it.
TENSOR_PARALLEL_NON_TORCH_BYTES = round(2.085 * GiB)
# Under the rules that charge the CUDA context (total_used, allocated_peak) the "non-torch" figure is
# ``used - torch allocated``: vLLM 0.6.4 printed non_torch_memory=0.35GiB for Llama-3.1-8B on an RTX 3090
# (vllm-project/vllm#10517, tests/fixtures/serving_logs.yaml vllm-llama31-8b-rtx3090-tp1-20k).
CONTEXT_NON_TORCH_BYTES = round(0.35 * GiB)
# Memory in use when the snapshot is taken (CUDA context): vLLM 0.19.0's worker snapshot on an H100 reads
# cuda_memory=0.51GiB (llm-d-planner v0.19.0 logs @ d3121e0, meta-llama-llama-3-1-8b ... 16384.log).
CUDA_CONTEXT_BYTES = round(0.51 * GiB)
# CUDA graph memory the 0.20+ profiler estimates ("Estimated CUDA graph memory: N GiB total"). The graphs it
# captures follow from the config (gpuplan/engines/vllm_cudagraphs.py); the bytes do not: they are free-memory
# drops that the kernels picked decide (0.52-1.82 GiB for the same 51 + 51 graphs on H100 in sixteen vLLM 0.19.0
# logs of tests/fixtures/serving_logs.yaml; docs/serving.md, "the CUDA graph estimate"). The median of four values
# logged with the estimate on by default: 0.17 (https://github.com/noonghunna/club-3090/issues/127, RTX 3090,
# TP=4), 0.36 (https://github.com/gpustack/runner/pull/251, 0.27.1, TP=2, PIECEWISE=16 (largest=16)), 0.52
# (https://github.com/LMCache/LMCache/issues/3430, 0.21.0, Qwen3-8B, PIECEWISE=51 (largest=512), FULL=35
# (largest=256)) and 2.22 GiB (https://github.com/vllm-project/vllm/issues/50722, TP=4 MoE).
CUDA_GRAPH_ESTIMATE_BYTES = round(0.44 * GiB)
# v1/worker/extensible_kv_cache.py (0.34.0): KV_CACHE_MARGIN_FLOOR_BYTES = 1 << 30 (3 << 30 on ROCm),
# KV_CACHE_MARGIN_FRACTION = 0.75.
EXTENSIBLE_MARGIN_FLOOR_BYTES = 1 << 30
EXTENSIBLE_MARGIN_FRACTION = 0.75
# v1/worker/gpu_worker.py (0.10.2-0.34.0): redundancy_buffer_memory = 150 * (1 << 20) in the
# ``--kv-cache-memory`` suggestion printed after CUDA graph capture.
KV_CACHE_MEMORY_SUGGESTION_MARGIN = 150 * MiB


class VllmRelease(BaseModel):
    """What one vLLM release does at startup (docs/serving.md, "Releases")."""

    model_config = ConfigDict(frozen=True)

    version: str
    """The release asked for, normalised to X.Y.Z."""
    era: str
    """The first..last release of the row of RELEASE_ROWS this release falls in."""
    engines: tuple[Engine, ...]
    """Engines the release ships, the default first."""
    budget_rule: BudgetRule
    v0_budget_rule: BudgetRule
    """The V0 worker's rule in releases that still ship V0."""
    gpu_memory_utilization: float
    block_size: int
    batch_defaults: BatchDefaults
    v1_seqs_everywhere: bool
    """0.7.x-0.8.0: V1 defaults max_num_seqs to 1024 on every GPU (engine/arg_utils.py 0.7.0 line
    ``self.max_num_seqs = 256 if not envs.VLLM_USE_V1 else 1024``)."""
    v0_long_context_chunk: int | None
    """V0 switches chunked prefill on by itself above 32K tokens (no sliding window) with this many batched
    tokens: None before 0.5.3, 512 in 0.5.3-0.6.4, 2048 from 0.6.5."""
    profile_logits: ProfileLogits
    sampler: SamplerKind
    """The PyTorch path of V1's TopKTopPSampler (``forward_native``): ``sort`` up to 0.16, ``in_place`` from 0.17."""
    flashinfer_by_default: bool
    """V1's TopKTopPSampler takes FlashInfer unless VLLM_USE_FLASHINFER_SAMPLER=0: whenever flashinfer imports in
    0.7.0-0.11.0, on the GPUs FlashInfer supports from 0.21.0; 0.11.1-0.20.x need VLLM_USE_FLASHINFER_SAMPLER=1
    (v1/sample/ops/topk_topp_sampler.py and envs.py of each wheel, docs/serving.md)."""
    flashinfer_installed: bool
    """``pip install vllm`` installs flashinfer-python (the wheel's METADATA ``Requires-Dist``, 0.11.1+; 0.10.1-0.11.0
    only with the ``flashinfer`` extra)."""
    flashinfer_call: FlashInferCall
    """How the FlashInfer path samples: 0.7.0-0.8.x take the fp32 softmax and sample from the probabilities
    (``top_k_top_p_sampling_from_probs``, and only with flashinfer < 0.2.3 in 0.8.x); from 0.9.0 it passes the
    logits to ``top_k_top_p_sampling_from_logits``, which masks them into a new fp32 tensor and softmaxes that."""
    hybrid_kv: bool
    """V1 groups sliding-window and full-attention layers (0.9.1+); before, sliding layers were sized as full."""
    token_report: TokenReport
    kv_cache_memory_flag: bool
    max_model_len_auto: bool
    null_block_reserved: bool
    """0.29+: the one-request check and ``--max-model-len auto`` plan against the pool less one block, the null
    block the block pool holds back (v1/core/kv_cache_utils.py "Reserve the null block BlockPool permanently
    holds back", 0.29.0; absent in 0.28.0)."""


def parse_release(text: str) -> tuple[int, int, int]:
    """``0.19``, ``0.19.0``, ``v0.6.4.post1``, ``0.20.2rc1.dev9+g01d4d1ad3`` -> (0, 19, 0) etc. A fourth number is a
    hotfix of the release it extends and takes its rules: ``0.10.1.1`` -> (0, 10, 1) (vLLM published 0.10.1.1 on PyPI;
    its server prints "vLLM API server version 0.10.1.1")."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+)(?:\.\d+)?)?(?:[.\-+]?(?:post|rc|dev|a|b)\d*)*(?:\+[\w.]+)?",
                         text.strip())
    if match is None:
        raise ValueError(text)
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _fmt(version: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in version)


_V = tuple[int, int, int]

# 0.7.0-0.8.x topk_topp_sampler.py: FlashInfer whenever it imports (0.8.x: only flashinfer < 0.2.3), sampling
# from the fp32 softmax; no Requires-Dist on flashinfer in these wheels.
_FLASHINFER_WHEN_IMPORTABLE_PROBS = {"flashinfer_by_default": True, "flashinfer_call": "from_probs"}
# 0.21.0+: a dependency (METADATA) and on by default where the GPU supports it.
_FLASHINFER_INSTALLED_AND_ON = {"flashinfer_by_default": True, "flashinfer_installed": True}

# (first release, fields). A release takes the last row whose first release is not above it.
_ROWS: list[tuple[_V, dict]] = [
    ((0, 2, 5), {"engines": ("v0",), "budget_rule": "total_used", "v0_budget_rule": "total_used",
                 "v0_long_context_chunk": None}),
    ((0, 3, 1), {"engines": ("v0",), "budget_rule": "reserved_peak", "v0_budget_rule": "reserved_peak",
                 "v0_long_context_chunk": None}),
    # 0.5.3 engine/arg_utils.py: chunked prefill on above 32K tokens, 512 batched tokens (config.py).
    ((0, 5, 3), {"engines": ("v0",), "budget_rule": "reserved_peak", "v0_budget_rule": "reserved_peak",
                 "v0_long_context_chunk": 512}),
    ((0, 6, 4), {"engines": ("v0",), "budget_rule": "allocated_peak", "v0_budget_rule": "allocated_peak",
                 "v0_long_context_chunk": 512}),
    # 0.6.5-0.6.6: memory_profiling (utils.py), 2048 batched tokens with chunked prefill (config.py).
    ((0, 6, 5), {"engines": ("v0",), "budget_rule": "snapshot", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048}),
    # 0.7.0: V1 alpha (opt-in, VLLM_USE_V1=1), the 0.6.4 rule in v1/worker/gpu_worker.py; profile_run
    # computes logits for every batched token (v1/worker/gpu_model_runner.py).
    ((0, 7, 0), {"engines": ("v0", "v1"), "budget_rule": "allocated_peak", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "profile_logits": "all_tokens", "batch_defaults": "v1_h100_name",
                 "v1_seqs_everywhere": True, "token_report": "blocks", **_FLASHINFER_WHEN_IMPORTABLE_PROBS}),
    # 0.7.3: logits for one row per request (logit_indices), no sampler pass.
    ((0, 7, 3), {"engines": ("v0", "v1"), "budget_rule": "allocated_peak", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "profile_logits": "per_request", "batch_defaults": "v1_h100_name",
                 "v1_seqs_everywhere": True, "token_report": "blocks", **_FLASHINFER_WHEN_IMPORTABLE_PROBS}),
    # 0.8.0: V1 by default; _dummy_sampler_run; "GPU KV cache size: N tokens" (kv_cache_utils.py).
    ((0, 8, 0), {"engines": ("v1", "v0"), "budget_rule": "allocated_peak", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "batch_defaults": "v1_h100_name", "v1_seqs_everywhere": True,
                 **_FLASHINFER_WHEN_IMPORTABLE_PROBS}),
    # 0.8.5 engine/arg_utils.py: batch defaults by device memory >= 70 GiB (0.8.1-0.8.4 not read).
    ((0, 8, 1), {"engines": ("v1", "v0"), "budget_rule": "allocated_peak", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "batch_defaults": "v1_70gib",
                 **_FLASHINFER_WHEN_IMPORTABLE_PROBS}),
    # 0.9.0: ... and not an A100 (PR #17885). FlashInfer >= 0.2.3 samples from the logits (topk_topp_sampler.py).
    ((0, 9, 0), {"engines": ("v1", "v0"), "budget_rule": "allocated_peak", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "flashinfer_by_default": True}),
    # 0.9.1: memory_profiling snapshot in V1 (PR #19312), hybrid KV cache manager, tokens per group.
    ((0, 9, 1), {"engines": ("v1", "v0"), "budget_rule": "snapshot", "v0_budget_rule": "snapshot",
                 "v0_long_context_chunk": 2048, "hybrid_kv": True, "token_report": "blocks_per_group",
                 "flashinfer_by_default": True}),
    # 0.10.2: --kv-cache-memory (CacheConfig.kv_cache_memory_bytes, absent in 0.9.1).
    ((0, 10, 2), {"engines": ("v1", "v0"), "budget_rule": "snapshot", "v0_budget_rule": "snapshot",
                  "v0_long_context_chunk": 2048, "hybrid_kv": True, "token_report": "blocks_per_group",
                  "kv_cache_memory_flag": True, "flashinfer_by_default": True}),
    # 0.11.0: V0 removed; the snapshot is taken after NCCL init (PR #25359).
    ((0, 11, 0), {"hybrid_kv": True, "token_report": "blocks_per_group", "kv_cache_memory_flag": True,
                  "flashinfer_by_default": True}),
    # 0.11.1: flashinfer-python is a dependency (METADATA), and the FlashInfer sampler is opt-in
    # (VLLM_USE_FLASHINFER_SAMPLER=1, topk_topp_sampler.py "Users must opt in explicitly").
    ((0, 11, 1), {"hybrid_kv": True, "token_report": "blocks_per_group", "kv_cache_memory_flag": True,
                  "flashinfer_installed": True}),
    # 0.14.0 v1/core/kv_cache_utils.py _auto_fit_max_model_len: --max-model-len -1 / auto (absent in 0.13.0).
    ((0, 14, 0), {"hybrid_kv": True, "token_report": "blocks_per_group", "kv_cache_memory_flag": True,
                  "max_model_len_auto": True, "flashinfer_installed": True}),
    # 0.17.0: the Triton top-k/top-p kernel masks logits in place (PR #33538).
    ((0, 17, 0), {"hybrid_kv": True, "token_report": "blocks_per_group", "kv_cache_memory_flag": True,
                  "max_model_len_auto": True, "sampler": "in_place", "flashinfer_installed": True}),
    # 0.20.0: CUDA graph estimate on by default (envs.py), gpu_memory_utilization 0.92 (config/cache.py).
    ((0, 20, 0), {"budget_rule": "cuda_graph", "gpu_memory_utilization": 0.92, "hybrid_kv": True,
                  "token_report": "blocks_per_group", "kv_cache_memory_flag": True, "max_model_len_auto": True,
                  "sampler": "in_place", "flashinfer_installed": True}),
    # 0.21.0 kv_cache_utils.py: "GPU KV cache size" = int(max_concurrency x max_model_len); envs.py:
    # VLLM_USE_FLASHINFER_SAMPLER defaults to True (None in 0.20.2), the FlashInfer sampler is on by default.
    ((0, 21, 0), {"budget_rule": "cuda_graph", "gpu_memory_utilization": 0.92, "hybrid_kv": True,
                  "token_report": "concurrency", "kv_cache_memory_flag": True, "max_model_len_auto": True,
                  "sampler": "in_place", **_FLASHINFER_INSTALLED_AND_ON}),
    # 0.29.0 kv_cache_utils.py: the one-request check and the auto-fit leave out the null block (not in 0.28.0).
    ((0, 29, 0), {"budget_rule": "cuda_graph", "gpu_memory_utilization": 0.92, "hybrid_kv": True,
                  "token_report": "concurrency", "kv_cache_memory_flag": True, "max_model_len_auto": True,
                  "sampler": "in_place", "null_block_reserved": True, **_FLASHINFER_INSTALLED_AND_ON}),
    # 0.34.0: extensible KV cache, utilization 1.0 by default with it, block_size 64, batch defaults for
    # >= 160 GiB GPUs (engine/arg_utils.py).
    ((0, 34, 0), {"budget_rule": "extensible", "gpu_memory_utilization": 1.0, "block_size": 64, "hybrid_kv": True,
                  "token_report": "concurrency", "kv_cache_memory_flag": True, "max_model_len_auto": True,
                  "sampler": "in_place", "batch_defaults": "v1_160gib", "null_block_reserved": True,
                  **_FLASHINFER_INSTALLED_AND_ON}),
]
_DEFAULTS = {"engines": ("v1",), "budget_rule": "snapshot", "v0_budget_rule": "snapshot", "gpu_memory_utilization": 0.9,
                 "block_size": 16, "batch_defaults": "v1_70gib_not_a100", "v1_seqs_everywhere": False,
                 "v0_long_context_chunk": 2048, "profile_logits": "sampler", "sampler": "sort", "hybrid_kv": False,
                 "token_report": "blocks", "kv_cache_memory_flag": False, "max_model_len_auto": False,
                 "null_block_reserved": False, "flashinfer_by_default": False, "flashinfer_installed": False,
                 "flashinfer_call": "from_logits"}

OLDEST: _V = (0, 2, 5)
NEWEST: _V = (0, 34, 0)
"""The newest release whose sources were read: the default."""
SUPPORTED = f"{_fmt(OLDEST)} to {_fmt(NEWEST)}"


def select_release(engine: str, version: str | None, rows: list, oldest: _V, newest: _V) -> tuple[str, str, dict]:
    """The release ``version`` of an engine (default: ``newest``) as (version, era, the fields of its row),
    from a table of (first release, fields) rows in release order. A version that is malformed or outside
    [oldest, newest] is one InputError naming the range."""
    supported = f"{_fmt(oldest)} to {_fmt(newest)}"
    text = _fmt(newest) if version is None else version
    try:
        parsed = parse_release(text)
    except ValueError:
        raise InputError(f"{engine} release {text!r} is not a version number",
                         hint=f"give X.Y.Z, from {supported}") from None
    if not oldest <= parsed <= newest:
        raise InputError(f"{engine} release {_fmt(parsed)} is outside the supported range {supported}",
                         hint=f"give a release from {supported}")
    index = max(i for i, (first, _) in enumerate(rows) if first <= parsed)
    # A row's last release is the one before the next row's first (X.Y.x when that steps back a minor).
    last = _fmt(newest)
    if index + 1 < len(rows):
        major, minor, patch = rows[index + 1][0]
        last = f"{major}.{minor}.{patch - 1}" if patch else f"{major}.{minor - 1}.x"
    return _fmt(parsed), f"{_fmt(rows[index][0])}-{last}", rows[index][1]


@functools.lru_cache(maxsize=64)  # a release's rules never change; a plan asks once per layout tried
def vllm_release(version: str | None = None) -> VllmRelease:
    """The rules of vLLM ``version`` (default: the newest release read). Raises InputError outside the range."""
    parsed, era, row = select_release("vLLM", version, _ROWS, OLDEST, NEWEST)
    return VllmRelease(version=parsed, era=era, **{**_DEFAULTS, **row})


# FlashInferBackend.supports_compute_capability (v1/attention/backends/flashinfer.py): compute capability 7.5 to
# 12.1 in 0.21.0-0.23.0, 8.0 to 12.1 from 0.24.0 ("currently broken on SM75 (Turing)"; 0.34.0 the same). The
# catalog's NVIDIA architectures by their lowest compute capability (https://developer.nvidia.com/cuda-gpus; Blackwell:
# 10.0 for B200, 12.0 for the RTX 50 series, both under 12.1; Blackwell Ultra B300: 10.3; Pascal: 6.0 for P100, 6.1
# for the GeForce 10 series, which vLLM runs with XFormers on its CUDA platform).
_CUDA_CAPABILITY = {"Pascal": (6, 0), "Volta": (7, 0), "Turing": (7, 5), "Ampere": (8, 0), "Ada Lovelace": (8, 9),
                    "Hopper": (9, 0), "Blackwell": (10, 0), "Blackwell Ultra": (10, 3)}
_FLASHINFER_SM80_FLOOR: _V = (0, 24, 0)


def is_cuda_platform(architecture: str | None) -> bool:
    """vLLM runs a GPU of ``architecture`` on its CUDA platform: an NVIDIA architecture, or a GPU not named (taken
    as one); AMD GPUs run on ROCm, Intel's on XPU."""
    return architecture in (None, "unknown") or architecture in _CUDA_CAPABILITY


@functools.lru_cache(maxsize=256)  # a plan asks once per layout tried
def flashinfer_supports(release: VllmRelease, architecture: str | None) -> bool:
    """FlashInfer's sampler runs on a GPU of ``architecture`` in this release (None: a GPU not named, taken as
    supported). Other vendors' GPUs are not CUDA platforms, where TopKTopPSampler never takes FlashInfer."""
    if architecture in (None, "unknown"):  # unknown: a GPU given by its memory alone
        return True
    capability = _CUDA_CAPABILITY.get(architecture)
    if capability is None:
        return False
    floor = (8, 0) if parse_release(release.version) >= _FLASHINFER_SM80_FLOOR else (7, 5)
    return floor <= capability <= (12, 1)


def profile_sampler(release: VllmRelease, engine: Engine, flashinfer: bool | None = None,
                    flashinfer_supported: bool = True) -> SamplerKind | None:
    """The sampler of the profile run's dummy sampler pass; None where the profile run samples nothing (V1 of
    0.7.x). ``flashinfer``: VLLM_USE_FLASHINFER_SAMPLER (None: unset). Unset, V1 takes FlashInfer where the release
    installs it and uses it by default, on a GPU it supports (``FlashInferBackend.supports_compute_capability``,
    from 0.21.0); otherwise its PyTorch path. V0 samples with FlashInfer only when the variable is 1 (envs.py:
    "0" in 0.6.5, None read as False from 0.7.0), which gpuplan does not model."""
    if engine == "v0":
        if flashinfer:
            raise InputError("the FlashInfer sampler is modelled for vLLM's V1 engine only",
                             hint="drop --flashinfer-sampler, or model the V1 engine")
        return release.sampler
    if release.profile_logits != "sampler":
        return None
    if flashinfer is None:
        flashinfer = release.flashinfer_by_default and release.flashinfer_installed and flashinfer_supported
    return "flashinfer" if flashinfer else release.sampler


def installed_version(package: str) -> str | None:
    """The version of ``package`` installed where gpuplan runs (package metadata; never imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def default_batch_limits(release: VllmRelease, engine: Engine, total_gpu_memory: int, gpu_name: str | None,
                         usage_context: str, max_model_len: int, sliding_window: bool) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) the release picks when neither is given."""
    if engine == "v0":
        # V0 SchedulerConfig (config.py): max(max_model_len, 2048) tokens, 256 sequences, unless chunked
        # prefill switched itself on for a long context (engine/arg_utils.py, CUDA, no sliding window).
        chunk = release.v0_long_context_chunk
        if chunk is not None and max_model_len > 32768 and not sliding_window:
            return chunk, 256
        return max(max_model_len, 2048), 256
    name = (gpu_name or "").lower()
    openai = usage_context == "openai"
    rule = release.batch_defaults
    if rule == "v1_h100_name":
        large = "h100" in name or "h200" in name
    elif rule == "v1_70gib":
        large = total_gpu_memory >= 70 * GiB
    else:
        large = total_gpu_memory >= 70 * GiB and "a100" not in name
    if rule == "v1_160gib" and total_gpu_memory >= 160 * GiB:
        return 16384, 1024
    if large:
        return (8192 if openai else 16384), 1024
    return (2048 if openai else 8192), 1024 if release.v1_seqs_everywhere else 256


class Charge(NamedTuple):
    """What a release charges before the KV cache on one GPU, in bytes (a named tuple: a budget takes one per
    kind of pipeline stage)."""

    available: int
    non_torch: int
    cuda_graph: int


def charge_total_used(requested: int, weights: int, activation: int, tp: int) -> Charge:
    """0.2.5-0.3.0: ``requested - (total - free after profiling)``; the context, cuBLAS, NCCL and the
    allocator's cached activation blocks are all in use."""
    non_torch = CONTEXT_NON_TORCH_BYTES + (TENSOR_PARALLEL_NON_TORCH_BYTES if tp > 1 else 0)
    return Charge(available=requested - weights - activation - non_torch, non_torch=non_torch, cuda_graph=0)


def charge_reserved_peak(requested: int, weights: int, activation: int, tp: int) -> Charge:
    """0.3.1-0.6.3: ``requested - (init_free - free after profiling)``: the context is outside the charge;
    ``activation`` is what the profile run left reserved (gpuplan.engines.vllm.vllm_budget passes the replayed
    reservation of gpuplan.engines.vllm_v0_reserved where the model's V0 modules are written out there)."""
    non_torch = TENSOR_PARALLEL_NON_TORCH_BYTES if tp > 1 else SNAPSHOT_NON_TORCH_BYTES
    return Charge(available=requested - weights - activation - non_torch, non_torch=non_torch, cuda_graph=0)


def charge_allocated_peak(requested: int, weights: int, activation: int, tp: int) -> Charge:
    """0.6.4 and V1 0.7.0-0.9.0: allocated peak plus ``used - torch allocated``, the context included."""
    return charge_total_used(requested, weights, activation, tp)


def charge_snapshot(requested: int, weights: int, activation: int, tp: int,
                    non_torch: int | None = None) -> Charge:
    """0.6.5+ (V0) and 0.9.1-0.19 (V1): ``weights + torch peak increase + non-torch increase``."""
    if non_torch is None:
        non_torch = TENSOR_PARALLEL_NON_TORCH_BYTES if tp > 1 else SNAPSHOT_NON_TORCH_BYTES
    return Charge(available=requested - weights - activation - non_torch, non_torch=non_torch, cuda_graph=0)


def charge_cuda_graph(requested: int, weights: int, activation: int, tp: int,
                      non_torch: int | None = None, cuda_graph: int = CUDA_GRAPH_ESTIMATE_BYTES) -> Charge:
    """0.20-0.33: the snapshot charge plus the CUDA graph estimate."""
    base = charge_snapshot(requested, weights, activation, tp, non_torch)
    return Charge(available=base.available - cuda_graph, non_torch=base.non_torch, cuda_graph=cuda_graph)


def charge_extensible(requested: int, total: int, weights: int, activation: int, tp: int,
                      non_torch: int | None = None, cuda_graph: int = CUDA_GRAPH_ESTIMATE_BYTES) -> Charge:
    """0.34: sized after warm-up (extensible_kv_cache.py measure_kv_cache_bytes).

    ``used`` = weights + non-torch + captured graphs; ``free + committed = total - context - used``; the
    transient peak kept free is the profiled activation peak plus the graph estimate
    (gpu_worker.py ``peak_activation_memory``); the margin is ``max(1 GiB, 0.75 x transient peak)``.
    """
    if non_torch is None:
        non_torch = TENSOR_PARALLEL_NON_TORCH_BYTES if tp > 1 else SNAPSHOT_NON_TORCH_BYTES
    used = weights + non_torch + cuda_graph
    transient = activation + cuda_graph
    margin = max(EXTENSIBLE_MARGIN_FLOOR_BYTES, int(transient * EXTENSIBLE_MARGIN_FRACTION))
    headroom = total - CUDA_CONTEXT_BYTES - used
    available = min(requested - used, headroom - margin) - transient
    return Charge(available=available, non_torch=non_torch, cuda_graph=cuda_graph)


def charge(release: VllmRelease, engine: Engine, *, requested: int, total: int, weights: int, activation: int,
           tp: int, non_torch: int | None = None, cuda_graph: int = CUDA_GRAPH_ESTIMATE_BYTES) -> Charge:
    """Dispatch to the release's rule (the V0 worker's rule when ``engine`` is V0); ``cuda_graph`` is the graph
    estimate the 0.20+ rules charge (gpuplan.engines.vllm_cudagraphs.graph_estimate)."""
    rule = release.v0_budget_rule if engine == "v0" else release.budget_rule
    if rule == "total_used":
        return charge_total_used(requested, weights, activation, tp)
    if rule == "reserved_peak":
        return charge_reserved_peak(requested, weights, activation, tp)
    if rule == "allocated_peak":
        return charge_allocated_peak(requested, weights, activation, tp)
    if rule == "snapshot":
        return charge_snapshot(requested, weights, activation, tp, non_torch)
    if rule == "cuda_graph":
        return charge_cuda_graph(requested, weights, activation, tp, non_torch, cuda_graph)
    return charge_extensible(requested, total, weights, activation, tp, non_torch, cuda_graph)


def kv_cache_memory_suggestions(*, requested: int, total: int, weights: int, activation: int, non_torch: int,
                                captured_graphs: int) -> tuple[int, int]:
    """vLLM's two ``--kv-cache-memory`` suggestions (gpu_worker.py 0.10.2+, after CUDA graph capture):
    (to fit the requested memory, to fill the GPU), each ``limit - non-KV memory - 150 MiB``, the limit being
    the requested memory or the free memory at startup (total - context); ``captured_graphs`` is the memory of
    the graphs captured after sizing, whether or not their estimate was charged."""
    non_kv = weights + activation + non_torch + captured_graphs
    to_requested = requested - non_kv - KV_CACHE_MEMORY_SUGGESTION_MARGIN
    to_gpu = total - CUDA_CONTEXT_BYTES - non_kv - KV_CACHE_MEMORY_SUGGESTION_MARGIN
    return to_requested, to_gpu
