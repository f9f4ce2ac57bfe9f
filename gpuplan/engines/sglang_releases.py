"""SGLang releases: how each one picks ``mem_fraction_static`` when it is not given.

The token pool itself has one rule in every release read (``rest_memory = available_after_load -
free_before_load x (1 - mem_fraction_static)``, ``max_total_num_tokens = rest_memory // cell_size``:
``model_executor/model_runner.py`` ``profile_max_num_token`` in the 0.2.15 and 0.4.0 wheels,
``mem_cache/kv_cache_configurator.py`` in 0.5.23). The default fraction changed three times (wheels read:
0.2.15, 0.3.6, 0.4.0, 0.4.3, 0.4.6, 0.4.7, 0.4.8, 0.4.9, 0.4.10, 0.5.1, 0.5.2, 0.5.3, 0.5.5, 0.5.7-0.5.10,
0.5.15-0.5.20, 0.5.23; ``srt/server_args.py``, from 0.5.19 ``srt/arg_groups/memory_hook.py``):

* 0.2.15-0.4.7, ``tp_table``: 0.88 at TP 1, 0.87 at TP >= 2, 0.85 at >= 4, 0.83 / 0.82 / 0.81 at >= 8
  (0.2.x / 0.3.x / 0.4.x), 0.79 at >= 16; from 0.4.6, GPUs over 81,920 MB take ``(gpu_mem - 13 GiB) /
  gpu_mem`` instead (absent in 0.4.3).
* 0.4.8-0.5.2, ``gpu_class``: ``reserved`` by GPU class: 2.8 GB + tp x pp / 10 GB under 35 GB, 9.5 + tp x pp
  / 2 under 90 GB, 12 + tp x pp / 2 under 160 GB, 32 GB above; fraction ``round((gpu_mem - reserved) /
  gpu_mem, 3)`` (absent in 0.4.7).
* 0.5.3-0.5.23, ``reserved``: ``reserved = 512 + max(chunked_prefill_size, 2048) x 1.5 + cuda_graph_max_bs x
  2 + tp x pp / 8 x 1024`` MB, at least 10,240 MB on GPUs over 60 GB; from 0.5.10 piecewise CUDA graphs are on
  by default (``disable_piecewise_cuda_graph = False``; 0.5.8-0.5.9 had ``enable_piecewise_cuda_graph =
  False``) and add ``len(piecewise_cuda_graph_tokens) x 8`` MB, except with MLA (1.5 GB), pipeline
  parallelism or multimodal models (disabled). Post-capture sizing (0.5.16+) is opt-in
  (``SGLANG_ENABLE_POST_CAPTURE_KV_SIZING`` defaults to False) and not modelled.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpuplan.engines.vllm_releases import select_release

FractionRule = Literal["tp_table", "gpu_class", "reserved"]

OLDEST = (0, 2, 15)
NEWEST = (0, 5, 23)
"""The newest release whose sources were read: the default."""
SUPPORTED = "0.2.15 to 0.5.23"


class SglangRelease(BaseModel):
    """What one SGLang release does when ``mem_fraction_static`` is not given."""

    model_config = ConfigDict(frozen=True)

    version: str
    era: str
    fraction_rule: FractionRule
    tp8_fraction: float
    large_gpu_clause: bool
    small_gpu_graph_bs: int
    """cuda_graph_max_bs at TP < 4 on 20-35 GB GPUs: 16 (0.5.3), 24 (0.5.5-0.5.19), 48 (0.5.20+)."""
    small_gpu_graph_bs_tp4: int
    """The same at TP >= 4: 80 up to 0.5.19, 160 from 0.5.20."""
    small_gpu_chunk: int
    """chunked_prefill_size on 20-35 GB GPUs: 2048 up to 0.5.19, 4096 from 0.5.20."""
    piecewise_graphs: bool


_ROWS: list[tuple[tuple[int, int, int], dict]] = [
    ((0, 2, 15), {"fraction_rule": "tp_table", "tp8_fraction": 0.83}),
    ((0, 3, 0), {"fraction_rule": "tp_table", "tp8_fraction": 0.82}),
    ((0, 4, 0), {"fraction_rule": "tp_table"}),
    ((0, 4, 6), {"fraction_rule": "tp_table", "large_gpu_clause": True}),
    ((0, 4, 8), {"fraction_rule": "gpu_class"}),
    ((0, 5, 3), {"small_gpu_graph_bs": 16}),
    ((0, 5, 5), {}),
    ((0, 5, 10), {"piecewise_graphs": True}),
    ((0, 5, 20), {"piecewise_graphs": True, "small_gpu_graph_bs": 48, "small_gpu_graph_bs_tp4": 160,
                  "small_gpu_chunk": 4096}),
]
_DEFAULTS = {"fraction_rule": "reserved", "tp8_fraction": 0.81, "large_gpu_clause": False, "small_gpu_graph_bs": 24,
             "small_gpu_graph_bs_tp4": 80, "small_gpu_chunk": 2048, "piecewise_graphs": False}


@functools.lru_cache(maxsize=64)  # a release's rules never change; a plan asks once per layout tried
def sglang_release(version: str | None = None) -> SglangRelease:
    """The rules of SGLang ``version`` (default: the newest release read). Raises InputError outside the range."""
    parsed, era, row = select_release("SGLang", version, _ROWS, OLDEST, NEWEST)
    return SglangRelease(version=parsed, era=era, **{**_DEFAULTS, **row})


def default_chunk_and_graph(release: SglangRelease, gpu_mem_mb: float, tp: int = 1) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) for a GPU of ``gpu_mem_mb`` MB (server_args.py 0.5.10,
    memory_hook.py 0.5.23)."""
    if gpu_mem_mb < 20 * 1024:
        return 2048, 8
    if gpu_mem_mb < 35 * 1024:
        return release.small_gpu_chunk, release.small_gpu_graph_bs if tp < 4 else release.small_gpu_graph_bs_tp4
    if gpu_mem_mb < 60 * 1024:
        return 4096, 32 if tp < 4 else 160
    if gpu_mem_mb < 160 * 1024:
        return 8192, 256 if tp < 4 else 512
    return 16384, 512


def piecewise_graph_tokens(max_tokens: int) -> list[int]:
    """server_args.py _generate_piecewise_cuda_graph_tokens (0.5.10): capture sizes up to ``max_tokens``."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_tokens + 1, 512)))
    return [s for s in sizes if s <= max_tokens]


def fraction_tp_table(release: SglangRelease, gpu_mem_mb: float, tp: int) -> float:
    """0.2.15-0.4.7."""
    if release.large_gpu_clause and gpu_mem_mb > 81920:
        return (gpu_mem_mb - 1024 * 13) / gpu_mem_mb
    if tp >= 16:
        return 0.79
    if tp >= 8:
        return release.tp8_fraction
    if tp >= 4:
        return 0.85
    return 0.87 if tp >= 2 else 0.88


def fraction_gpu_class(gpu_mem_mb: float, tp: int, pp: int) -> float:
    """0.4.8-0.5.2."""
    parallel = tp * pp
    if gpu_mem_mb < 35 * 1024:
        reserved = (2.8 + parallel / 10) * 1024
    elif gpu_mem_mb < 90 * 1024:
        reserved = (9.5 + parallel / 2) * 1024
    elif gpu_mem_mb < 160 * 1024:
        reserved = (12 + parallel / 2) * 1024
    else:
        reserved = 32 * 1024
    return round((gpu_mem_mb - reserved) / gpu_mem_mb, 3)


def fraction_reserved(release: SglangRelease, gpu_mem_mb: float, *, tp: int, pp: int, chunk: int, graph_bs: int,
                      mla: bool, multimodal: bool) -> float:
    """0.5.3-0.5.23."""
    reserved = 512.0 + max(chunk, 2048) * 1.5 + graph_bs * 2 + tp * pp / 8 * 1024
    if release.piecewise_graphs and pp == 1 and not multimodal:
        reserved += 1.5 * 1024 if mla else len(piecewise_graph_tokens(chunk)) * 8
    if gpu_mem_mb > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mem_mb - reserved) / gpu_mem_mb, 3)
