"""The smallest GPU that runs a workload: gpuplan's total_bytes against the searches recorded on an H100
(tests/fixtures/measurements/min-memory-h100.jsonl, benchmarks/sweep_min_memory.py), and the allocator
simulation against the allocator traces recorded with them.

Targets (docs/accuracy.md, "Does it fit"): inference, both allocators: at least 95% of cases within 5% of the
smallest GPU that runs them, none under it by more than 2%; training: at least 90% within 5%.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuplan.calc.allocator import replay, smallest_limit
from gpuplan.units import MiB
from gpuplan.verify.min_memory import compare_min_memory, measured_rows, trace_events

FIXTURES = Path(__file__).parent / "fixtures" / "measurements"
ROWS = measured_rows(FIXTURES / "min-memory-h100.jsonl")
GENERATE = [r for r in ROWS if r["kind"] == "generate"]
TRAIN = [r for r in ROWS if r["kind"] == "train"]
TRACED = [r for r in GENERATE if r.get("trace_file") and (FIXTURES / "traces" / r["trace_file"]).exists()]
H100_CUDA_TOTAL = 85_017_493_504  # torch.cuda.get_device_properties(0).total_memory, the fixture's first line
# No generate() run of this sweep is under the smallest GPU by more than 2% (Mistral b16 was, by 2.4%, until the
# RMSNorm's float32 tensor was kept until the norm returns, as the Llama-3.1-8B trace of the third sweep showed).
UNDER: set[str] = set()


def _id(row):
    return f"{row['case_id']}|{row['allocator']}"


@pytest.fixture(scope="module")
def inference():
    return [compare_min_memory(r) for r in GENERATE]


def test_fixture_covers_what_the_targets_need():
    assert len(GENERATE) >= 20 and len(TRAIN) >= 6
    assert {r["allocator"] for r in GENERATE} == {"default", "expandable"}
    assert {r["split"] for r in ROWS} == {"fit", "heldout"}
    assert {r["dtype"] for r in GENERATE} == {"fp32", "fp16", "bf16"}
    assert {r["attn"] for r in GENERATE} == {"sdpa", "eager"}
    assert max(r["batch"] for r in GENERATE) == 32
    assert {r["new_tokens"] for r in GENERATE} >= {16, 256}
    assert all(r["min_cap"] >= r["peak_allocated"] for r in ROWS)


@pytest.mark.parametrize("row", TRACED, ids=[_id(r) for r in TRACED])
def test_simulation_replays_the_recorded_allocator_trace(row):
    """The recorded allocation sequence through gpuplan/calc/allocator.py: the same peak reservation, and the
    same smallest cap as the search on the GPU (64 MiB steps, as measured)."""
    events = trace_events(FIXTURES / "traces" / row["trace_file"], row["allocated_before_build"])
    expandable = row["allocator"] == "expandable"
    run = replay(events, expandable_segments=expandable, device_bytes=H100_CUDA_TOTAL)
    assert run.peak_allocated == row["trace_peak_allocated"]
    assert abs(run.peak_reserved - row["trace_peak_reserved"]) <= 0.001 * row["trace_peak_reserved"]
    assert smallest_limit(events, expandable_segments=expandable, step=64 * MiB,
                          device_bytes=H100_CUDA_TOTAL) == row["min_cap"]


@pytest.mark.parametrize("row", GENERATE, ids=[_id(r) for r in GENERATE])
def test_inference_total_is_not_under_the_smallest_gpu(row):
    if _id(row) in UNDER:
        pytest.xfail("known under-estimate, see UNDER")
    c = compare_min_memory(row)
    assert -0.02 <= c["error"] <= 0.05, f"total_bytes off by {c['error']:+.2%}"


def test_known_under_estimates_are_still_under():
    """UNDER lists exactly the cases that miss: one that starts to pass must leave the list."""
    under = {_id(r) for r in GENERATE if compare_min_memory(r)["error"] < -0.02}
    assert under == UNDER


def test_inference_targets(inference):
    errors = [c["error"] for c in inference]
    assert sum(abs(e) <= 0.05 for e in errors) / len(errors) >= 0.95
    held_out = [c["error"] for c in inference if c["split"] == "heldout"]
    assert len(held_out) >= 8 and sum(abs(e) <= 0.05 for e in held_out) / len(held_out) >= 0.9


def test_training_peaks_match_and_totals_are_reported():
    """The training peak (whole run from a fresh start, the loss on float32 logits of a 152k vocabulary
    included) is within 1% of the measured one. These searches kept, from one run to the next, the cuBLAS
    workspace autograd's thread allocated in the first run, so their smallest caps are not a fresh process's:
    the totals are checked against the same runs measured again (tests/test_training_allocations.py)."""
    for row in TRAIN:
        c = compare_min_memory(row)
        assert abs(c["peak_error"]) <= 0.01, (row["case_id"], c["peak_error"])


def test_rows_are_h100_measurements():
    env = [json.loads(line) for line in (FIXTURES / "min-memory-h100.jsonl").read_text().splitlines()
           if '"environment"' in line]
    assert env and all(e["versions"]["gpu_name"].startswith("NVIDIA H100") for e in env)
    assert all(e["versions"]["gpu_total_memory"] == H100_CUDA_TOTAL for e in env)


# ---- held out: later sweeps, measured once the model was fixed (docs/accuracy.md) -------------------------

LATER = [r for name in ("min-memory-heldout-h100.jsonl", "min-memory-heldout2-h100.jsonl",
                        "min-memory-heldout3-h100.jsonl", "min-memory-heldout4-h100.jsonl",
                        "min-memory-heldout5-h100.jsonl")
         for r in measured_rows(FIXTURES / name)]
FIRST = {(r["case_id"], r["allocator"]): r for r in ROWS}
# Four workloads of the first sweep ran again in the second process: repeats, not held-out cases.
REPEATED = [r for r in LATER if (r["case_id"], r["allocator"]) in FIRST]
HELD_OUT = [r for r in LATER if (r["case_id"], r["allocator"]) not in FIRST]
HELD_OUT_GENERATE = [r for r in HELD_OUT if r["kind"] == "generate"]
# Known miss: the measured cap is at most one 64 MiB search step (1.3% of this 4.7 GiB run) above the true
# smallest one, and this process had 0.757 GiB outside torch's allocator where 0.718 GiB is modelled.
HELD_OUT_UNDER = {"Qwen/Qwen3-1.7B · bf16 · sdpa · b1 · p4000 · n256|expandable"}


def test_a_repeated_search_finds_the_same_cap():
    """The same workload searched in another process: the same peak and the same smallest cap; only the memory
    outside torch's allocator differs (by tens of MiB)."""
    assert len(REPEATED) >= 4
    for row in REPEATED:
        first = FIRST[(row["case_id"], row["allocator"])]
        assert (row["peak_allocated"], row["min_cap"]) == (first["peak_allocated"], first["min_cap"])
        assert abs(row["outside_torch"] - first["outside_torch"]) <= 64 * MiB


def test_held_out_sweeps_cover_new_cases():
    """Both allocators, a fused-expert MoE, training runs."""
    assert len(HELD_OUT_GENERATE) >= 35 and {r["allocator"] for r in HELD_OUT_GENERATE} == {"default", "expandable"}
    assert any(r["model_id"] == "Qwen/Qwen3-30B-A3B" for r in HELD_OUT_GENERATE)
    assert sum(r["kind"] == "train" for r in HELD_OUT) >= 5


# Training totals are compared where each run started as a fresh process does (the third sweep, and the earlier
# training cases measured again: tests/test_training_allocations.py).
FRESH_START = [r for r in HELD_OUT if r["kind"] == "generate"
               or r in measured_rows(FIXTURES / "min-memory-heldout3-h100.jsonl")
               or r in measured_rows(FIXTURES / "min-memory-heldout4-h100.jsonl")
               or r in measured_rows(FIXTURES / "min-memory-heldout5-h100.jsonl")]
# A training run under by more than 2% is listed in tests/test_training_allocations.py (MISSES).
TRAINING_UNDER = {"openai-community/gpt2-medium|lora|fp32|adamw|b8|s512|gc0|ga1|default",
                  "Qwen/Qwen2.5-3B|full|mixed|adamw|b2|s1024|gc1|ga1|default",
                  "meta-llama/Llama-3.2-1B|lora|bf16|adamw|b4|s1024|gc0|ga1|default"}


@pytest.mark.parametrize("row", FRESH_START, ids=[_id(r) for r in FRESH_START])
def test_held_out_total_is_never_under_the_smallest_gpu_by_more_than_two_percent(row):
    if _id(row) in HELD_OUT_UNDER | TRAINING_UNDER:
        pytest.xfail("known under-estimate, see HELD_OUT_UNDER")
    c = compare_min_memory(row)
    assert c["error"] >= -0.02, f"total_bytes under the smallest GPU by {c['error']:+.2%}"


def test_known_held_out_misses_are_still_under():
    assert {_id(r) for r in FRESH_START if compare_min_memory(r)["error"] < -0.02} == HELD_OUT_UNDER | TRAINING_UNDER


def test_held_out_inference_target():
    """At least 95% of held-out generate() runs within 5% of the smallest GPU that ran them."""
    errors = [compare_min_memory(r)["error"] for r in HELD_OUT_GENERATE]
    assert sum(abs(e) <= 0.05 for e in errors) / len(errors) >= 0.95


def test_held_out_training_peaks_match():
    for row in (r for r in HELD_OUT if r["kind"] == "train"):
        c = compare_min_memory(row)
        assert abs(c["peak_error"]) <= 0.01, (row["case_id"], c["peak_error"])


def test_memory_outside_torch_is_the_same_on_h100_and_h200():
    """The smallest-GPU searches ran on an H100; the term outside torch's allocator that the estimate adds is the
    same on an H200 as CUDA reports it (the H200 peak measurements recorded the same figures): the CUDA context
    identical, the median after a generate() run within 0.03 GiB. NVML, which counts the driver's own
    reservation too, reads more on the H200 (docs/accuracy.md)."""
    import importlib.util
    import statistics

    script = Path(__file__).parent.parent / "benchmarks" / "accuracy_report.py"
    spec = importlib.util.spec_from_file_location("accuracy_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cards = module.outside_torch_by_card()
    h100, h200 = cards["H100"], cards["H200"]
    assert len(h100["after_run"]) >= 90 and len(h200["after_run"]) >= 150
    assert set(h100["context"]) == set(h200["context"])
    assert abs(statistics.median(h100["after_run"]) - statistics.median(h200["after_run"])) < 0.03 * 2**30
    assert statistics.median(h200["nvml_warm"]) > statistics.median(h100["nvml_warm"])
