"""The training run's allocation sequence (gpuplan/calc/training_allocations.py) and the total it gives, replayed
against the smallest GPU measured on an H100, each run starting as a fresh process does
(tests/fixtures/measurements/min-memory-training-fresh-h100.jsonl: the rules were checked against these runs and
their traces; min-memory-heldout3-h100.jsonl: measured once the rules were fixed, held out).

Targets (docs/accuracy.md, "Does it fit"): training, at least 90% of runs within 5% of the smallest GPU that runs
them, none under it by more than 2%. The misses are listed in MISSES and xfailed with their reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from gpuplan.api import as_resolved, train
from gpuplan.calc.allocator import replay
from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES, TRAINING_NON_TORCH_BYTES
from gpuplan.calc.training import TrainingSetup, embedding_backward_bytes, estimate_training
from gpuplan.calc.training_allocations import STEPS, training_allocator_fit, training_events
from gpuplan.models.sources import parse_config
from gpuplan.verify.compare import measured_config
from gpuplan.verify.min_memory import compare_min_memory, measured_rows

FIXTURES = Path(__file__).parent / "fixtures" / "measurements"
GiB = 2**30
FIT = [r for r in measured_rows(FIXTURES / "min-memory-training-fresh-h100.jsonl") if r["kind"] == "train"]
HELD_OUT = [r for name in ("min-memory-heldout3-h100.jsonl", "min-memory-heldout4-h100.jsonl",
                           "min-memory-heldout5-h100.jsonl", "min-memory-heldout6-h100.jsonl",
                           "min-memory-heldout7-h100.jsonl")
            for r in measured_rows(FIXTURES / name) if r["kind"] == "train"]
TRAIN = FIT + HELD_OUT
# Known misses. Qwen3-0.6B LoRA (over): its search passed at 35.19 GiB, but the same run failed at 36.25 GiB in a
# later process (min-memory-recheck-h100.jsonl), and its recorded trace, replayed, needs 37.50 GiB (the sequence
# 37.44): the allocator's outcome there depends on the addresses cudaMalloc returns.
# Held out (fourth sweep): GPT-2 medium LoRA in float32 is under: in its recorded trace autograd's cuBLAS workspace,
# allocated at the first step's lm_head backward, finds no free block of 32 MiB outside the freed float32-logits
# segments and lands in one, which the second step's logits then cannot reuse; the sequence (its GPT-2 blocks are
# not written op by op) leaves a 32 MiB hole for it. The peak of live tensors is +0.1%. Gemma-2-2B full
# fine-tuning with checkpointing was 5.5% over while the sequence accumulated the embedding's gradient in float32
# [V, h], which the recorded traces never show (training.py embedding_backward_bytes): -0.2% since.
# Llama-3.2-1B LoRA at 4 x 1,024 tokens (fourth sweep, held out) was -1.1% until the LoRA blocks were written op by
# op, -4.98% since. Its trace, recorded afterwards (traces/training/capscan/), replayed needs the searched cap
# (-0.1%), and a search in that later process found the same cap: the sequence is 5.0% under the trace, at the
# second step's logits (the sequence before the LoRA blocks were written op by op needed 19.00 GiB, -0.9%).
# Qwen2.5-3B in mixed precision: its trace replayed needs the searched cap (+0.0%), the
# sequence 2.0% less.
# Held out (sixth sweep): Qwen2.5-0.5B LoRA at 4 x 1,024 tokens is under: its own recorded trace, replayed, needs
# 15.88 GiB where the capped runs failed up to 17.06 GiB; the sequence needs what the trace does (15.87). Replayed
# with new segments placed above the earlier ones instead of below, the trace needs the searched cap (-0.2%): the
# driver's choice of address decides it (tests/test_allocator_addresses.py).
# Held out (seventh sweep, measured once the LoRA blocks were written op by op): Qwen3-4B LoRA at 2 x 1,024 tokens
# is 5.3% under and Llama-3.2-1B-Instruct LoRA at 8 x 512 tokens 4.8% under (the Llama-3.2-1B run above with another
# split of the same 4,096 tokens); both traces replay to their searched caps, the sequences need 5.2% and 5.0% less
# (the sequence before the LoRA blocks were written op by op: +0.1% and -0.9%). Phi-3-mini LoRA without
# checkpointing (fused q/k/v, not written op by op) is 6.5% over with its peak of live tensors 8.3% over: a
# memory-model error, not the allocator's.
MISSES = {
    "Qwen/Qwen3-0.6B|lora|bf16|adamw|b8|s1024|gc0|ga1": "over: the measured cap was a pass that did not repeat",
    "openai-community/gpt2-medium|lora|fp32|adamw|b8|s512|gc0|ga1":
        "under: a cuBLAS workspace in a logits segment (held out)",
    # -2.01% (at the line, -2.00% while the two pools were sized apart): the peak of live tensors is exact
    # (-0.01%); no trace of this run was recorded.
    "Qwen/Qwen2.5-3B|full|mixed|adamw|b2|s1024|gc1|ga1": "under by 2.01% (held out)",
    "meta-llama/Llama-3.2-1B|lora|bf16|adamw|b4|s1024|gc0|ga1": "under by 4.98% (held out)",
    "Qwen/Qwen2.5-0.5B|lora|bf16|adamw|b4|s1024|gc0|ga1":
        "under: the capped runs needed more than the simulation of their own trace (held out)",
    "Qwen/Qwen3-4B|lora|bf16|adamw|b2|s1024|gc0|ga1":
        "under by 5.3%: the sequence, its trace replays to the cap (held out)",
    "meta-llama/Llama-3.2-1B-Instruct|lora|bf16|adamw|b8|s512|gc0|ga1":
        "under by 4.8%: the sequence, its trace replays to the cap (held out)",
    "microsoft/Phi-3-mini-4k-instruct|lora|bf16|adamw|b2|s1024|gc0|ga1":
        "over: its peak of live tensors is 8.3% over (held out)",
}


def _setup(row: dict) -> tuple:
    spec = parse_config(measured_config(row), label=row["model_id"])
    setup = TrainingSetup(method=row["method"], precision=row["precision"], optimizer=row["optimizer"],
                          lora_rank=row["lora_rank"] or 16, grad_checkpointing=row["grad_checkpointing"],
                          batch=row["batch"], seq=row["seq"], grad_accumulation=row["grad_accumulation"])
    return spec, setup


@pytest.mark.parametrize("row", TRAIN, ids=[r["case_id"] for r in TRAIN])
def test_sequence_peak_is_the_estimated_peak(row):
    """The sequence is built from the memory model's sizes: replayed, its live tensors peak where the estimate
    does, within 0.7%. The widest are OPT-2.7B LoRA in float32, +0.65% (128 MiB), and GPT-2 under autocast, +0.49%."""
    spec, setup = _setup(row)
    peak = replay(training_events(spec, setup)).peak_allocated
    estimated = estimate_training(spec, setup).peak_allocated_bytes
    assert abs(peak - estimated) <= 0.007 * estimated


@pytest.mark.parametrize("row", TRAIN, ids=[r["case_id"] for r in TRAIN])
def test_sequence_is_balanced(row):
    """Each tensor is allocated once and freed at most once, never before it exists; what stays at the end is
    the weights, the optimizer states and the two cuBLAS workspaces (allocated at the first step)."""
    spec, setup = _setup(row)
    events = training_events(spec, setup)
    live: dict[int, int] = {}
    for action, tensor, size in events:
        if action == "a":
            assert tensor not in live
            live[tensor] = size
        else:
            assert action == "f" and tensor in live
            del live[tensor]
    mem = estimate_training(spec, setup)
    kept = sum(live.values())
    expected = mem.weights_bytes + mem.optimizer_bytes + 2 * CUBLAS_WORKSPACE_BYTES
    assert abs(kept - expected) <= 0.001 * expected


def test_optimizer_states_are_created_once_and_gradients_every_step():
    """AdamW's exp_avg / exp_avg_sq appear at the first step only (adam.py _init_group); the foreach step's
    sqrt temporaries and the gradients (zero_grad(set_to_none=True)) come and go at every step."""
    row = next(r for r in TRAIN if r["method"] == "full" and r["precision"] == "bf16"
               and r["model_id"] == "meta-llama/Llama-3.2-1B")
    spec, setup = _setup(row)
    events = training_events(spec, setup)
    sgd = training_events(spec, setup.model_copy(update={"optimizer": "sgd"}))
    allocated = Counter(size for action, _, size in events if action == "a")
    plain = Counter(size for action, _, size in sgd if action == "a")
    extra = allocated - plain
    tensors = spec.num_hidden_layers * 9 + 2  # Llama: 9 tensors per layer, the embedding and the final norm
    # Two states per trainable tensor once, one sqrt temporary per trainable tensor at each step.
    assert sum(extra.values()) == tensors * (2 + STEPS)
    assert sum(size * n for size, n in extra.items()) == estimate_training(spec, setup).optimizer_bytes * (
        1 + STEPS / 2)


def test_fused_experts_keep_the_sequence_short():
    """transformers 5 builds a layer's experts as one fused tensor: a 256-expert model is not 15,000 tensors."""
    spec = as_resolved("deepseek-ai/DeepSeek-V3", offline=True).spec
    events = training_events(spec, TrainingSetup(batch=1, seq=1024))
    assert len(events) < 20_000


@pytest.mark.parametrize("row", TRAIN, ids=[r["case_id"] for r in TRAIN])
def test_training_total_is_the_smallest_gpu(row):
    """total_bytes = the estimated peak + what the simulated allocator needs beyond the simulated peak on the
    smallest card + the memory outside torch; within -2% .. +5% of the measured smallest GPU."""
    if row["case_id"] in MISSES:
        pytest.xfail(MISSES[row["case_id"]])
    c = compare_min_memory(row)
    assert -0.02 <= c["error"] <= 0.05, f"total_bytes off by {c['error']:+.2%}"


def test_known_training_misses_still_miss():
    """MISSES lists exactly the runs outside -2% .. +5%: one that starts to pass must leave the list."""
    missed = {r["case_id"] for r in TRAIN if not -0.02 <= compare_min_memory(r)["error"] <= 0.05}
    assert missed == set(MISSES)


def test_training_targets_on_the_runs_the_rules_were_checked_against():
    """Fresh-start runs whose traces the sequence was checked against: none under by more than 2%, 10 of 11
    within 5% (the miss is an over-estimate, MISSES)."""
    errors = [compare_min_memory(r)["error"] for r in FIT]
    assert len(errors) == 11 and min(errors) >= -0.02
    assert sum(abs(e) <= 0.05 for e in errors) >= 10


@pytest.mark.xfail(strict=True, reason="held out: 34 of 38 within 5%, six under by more than 2% (MISSES)")
def test_held_out_training_targets():
    errors = [compare_min_memory(r)["error"] for r in HELD_OUT]
    assert sum(abs(e) <= 0.05 for e in errors) / len(errors) >= 0.9
    assert min(errors) >= -0.02


def test_held_out_training_status():
    """What the held-out runs give today, so that a change in either direction is seen."""
    errors = [compare_min_memory(r)["error"] for r in HELD_OUT]
    assert len(errors) == 38
    # 21 of 24 and 1 until both allocator pools were replayed under one limit and the rotary temporaries written;
    # 22 of 24 and 2 after; the sixth sweep, measured after that, adds 5 of 8 and none under as measured, 6 of 8
    # since ReLU's output is counted once (test_sixth_sweep_as_measured): 28 of 32 and 2. With the LoRA blocks
    # written op by op, 30 of 32 and 4. The seventh sweep, measured after that, adds 4 of 6 and 2 under
    # (test_seventh_sweep_as_measured): 34 of 38 and 6.
    assert sum(abs(e) <= 0.05 for e in errors) == 34
    assert sum(e < -0.02 for e in errors) == 6


def test_workspaces_are_allocated_at_the_first_step():
    """A fresh process has no cuBLAS workspace before its first matmul: the sequence allocates the main
    thread's in the first layer's forward and autograd's thread's in the lm_head's backward, both once."""
    spec, setup = _setup(FIT[0])
    events = training_events(spec, setup)
    first_weight = next(i for i, (a, _, size) in enumerate(events) if a == "a" and size != CUBLAS_WORKSPACE_BYTES)
    workspaces = [i for i, (a, _, size) in enumerate(events) if a == "a" and size == CUBLAS_WORKSPACE_BYTES]
    assert first_weight < workspaces[0]
    freed = {t for a, t, _ in events if a == "f"}
    kept = [i for i in workspaces if events[i][1] not in freed]
    assert len(kept) == 2


def test_total_adds_the_simulated_slack_and_the_memory_outside_torch():
    row = TRAIN[0]
    spec, setup = _setup(row)
    result = train(spec, method=row["method"], precision=row["precision"], batch=row["batch"], seq=row["seq"],
                   grad_checkpointing=row["grad_checkpointing"], expandable_segments=False)
    fit = training_allocator_fit(spec, setup)
    slack = fit.limit_bytes - fit.peak_allocated_bytes
    assert result.components["allocator_slack"] == slack
    assert result.total_bytes == result.peak_allocated_bytes + slack + TRAINING_NON_TORCH_BYTES
    assert result.components["reserved_on_larger_card"] == result.peak_allocated_bytes + (
        fit.peak_reserved_bytes - fit.peak_allocated_bytes)


def test_expandable_segments_need_less():
    row = TRAIN[0]
    spec, setup = _setup(row)
    default = training_allocator_fit(spec, setup)
    expandable = training_allocator_fit(spec, setup, expandable_segments=True)
    assert expandable.limit_bytes <= default.limit_bytes


def test_sharded_runs_keep_the_largest_temporary_as_slack():
    """ZeRO / FSDP / DDP runs are not simulated (their communication buffers are not in the sequence)."""
    row = TRAIN[0]
    spec, _ = _setup(row)
    result = train(spec, batch=2, seq=1024, zero=2, gpus=2, expandable_segments=False)
    assert "reserved_on_larger_card" not in result.components
    assert result.components["allocator_slack"] == 2 * 1024 * spec.vocab_size * 4


TRACED = [r for r in FIT if r.get("trace_file")]


def test_recorded_training_traces_replay_to_the_measured_reservation():
    """Each run was traced once, uncapped, before its search (traces/training/). Replayed through the allocator
    simulation, a trace reserves what the measured uncapped run reserved, within 0.5%, in 10 of the 11 runs;
    Qwen2.5-1.5B (mixed precision, checkpointing) replays 3.3% above: the two runs of one process took
    different segments, which the addresses cudaMalloc returned decide."""
    from gpuplan.verify.min_memory import trace_events

    assert len(TRACED) == 11
    close = 0
    for row in TRACED:
        events = trace_events(FIXTURES / "traces" / "training" / row["trace_file"], row["allocated_before_case"])
        reserved = replay(events).peak_reserved
        close += abs(reserved / row["peak_reserved"] - 1) <= 0.005
    assert close >= 10


def test_embedding_gradient_is_written_in_its_own_dtype_and_a_tied_sum_is_a_new_tensor():
    """embedding_dense_backward writes [V, h] in the gradient's dtype (no float32 [V, h]); a tied weight's two
    gradients are summed into a third [V, h] in bf16 / fp32 training and in place under autocast (recorded
    traces: Llama-3.2-1B bf16 and GPT-2 fp32 allocate two [V, h] at the end of the backward, GPT-2 under
    autocast one)."""
    spec = as_resolved("google/gemma-2-2b-it", offline=True).spec
    emb = spec.vocab_size * spec.hidden_size

    def count(size: int, precision: str) -> int:
        events = training_events(spec, TrainingSetup(batch=1, seq=1024, precision=precision, grad_checkpointing=True))
        return sum(1 for action, _, s in events if action == "a" and s == size)

    assert count(emb * 4, "bf16") == 0
    assert count(emb * 2, "bf16") >= 2 * STEPS  # the lm_head's gradient, the embedding's and their sum
    assert embedding_backward_bytes(emb, 2, tied=True, autocast=False) == 2 * emb * 2
    assert embedding_backward_bytes(emb, 4, tied=True, autocast=True) == emb * 4
    assert embedding_backward_bytes(emb, 2, tied=False, autocast=False) == 0


FIFTH = [r for r in measured_rows(FIXTURES / "min-memory-heldout5-h100.jsonl") if r["kind"] == "train"]
FIFTH_TRACES = FIXTURES / "traces" / "training" / "heldout5"


# The traced runs' own lines (what their process had allocated when recording started).
FIFTH_TRACED = {r["case_id"]: r for r in (json.loads(line) for line in
                                          (FIFTH_TRACES / "traces-heldout5.jsonl").read_text().splitlines())
                if r.get("kind") == "train"}


def _fifth_trace(row: dict) -> list:
    from gpuplan.verify.min_memory import trace_events

    name = row["case_id"].replace("/", "--").replace("|", "_") + "-default.trace.gz"
    return trace_events(FIFTH_TRACES / name, FIFTH_TRACED[row["case_id"]]["allocated_before_case"])


def test_fifth_sweep_traces_replay_to_the_measured_reservation():
    """Each held-out training run of the fifth sweep was traced once more, uncapped, in a process of its own
    (traces/training/heldout5/): replayed through the allocator simulation, each trace reserves what the searched
    run reserved uncapped, within 0.2%."""
    assert len(FIFTH) == 8
    for row in FIFTH:
        reserved = replay(_fifth_trace(row)).peak_reserved
        assert abs(reserved / row["peak_reserved"] - 1) <= 0.002, row["case_id"]


def test_llama_checkpointed_run_follows_its_trace():
    """Llama-3.2-1B full fine-tuning with checkpointing was +17.2% as measured (its trace, replayed, needed the cap
    the search found, and the sequence 3.7 GiB more: the recomputed layers' inputs landed in a freed float32-logits
    segment). With the rotary embedding's temporaries in the sequence (apply_rotary_pos_emb) the recompute fills
    other holes first, as in the trace: the sequence needs the measured cap within 1%."""
    from gpuplan.calc.allocator import fit_whole

    row = next(r for r in FIFTH if r["case_id"].startswith("meta-llama/Llama-3.2-1B|full"))
    traced = fit_whole(_fifth_trace(row))
    assert abs(traced.limit_bytes / row["min_cap"] - 1) <= 0.005
    spec, setup = _setup(row)
    assert abs(training_allocator_fit(spec, setup).limit_bytes / row["min_cap"] - 1) <= 0.01


def test_traces_replayed_as_one_allocator_need_the_measured_caps():
    """Every recorded training trace, replayed with both pools under one limit (``fit_whole``), needs the cap the
    search found within 1.1% (17 of them within 0.5%; Qwen3-0.6B checkpointed -1.04%), except the Qwen3-0.6B
    LoRA run, whose measured pass did not repeat (+6.6%). Sized
    apart (``fit_sequence``: the large pool's limit plus the small pool's peak), the 152k-vocabulary LoRA runs
    needed 8.2% more than they did."""
    from gpuplan.calc.allocator import SMALL_SIZE, fit_sequence, fit_whole
    from gpuplan.verify.min_memory import trace_events

    def split_pools(events: list) -> tuple[list, list]:
        """The large-pool and small-pool events (CUDACachingAllocator.cpp get_pool: kSmallSize)."""
        small_ids = {tensor for action, tensor, size in events if action == "a" and size <= SMALL_SIZE}
        return [e for e in events if e[1] not in small_ids], [e for e in events if e[1] in small_ids]

    checked = 0
    for row in FIFTH + [r for r in FIT if r.get("trace_file")]:
        events = _fifth_trace(row) if row in FIFTH else trace_events(
            FIXTURES / "traces" / "training" / row["trace_file"], row.get("allocated_before_case", 0))
        whole = fit_whole(events).limit_bytes / row["min_cap"] - 1
        if row["case_id"].startswith("Qwen/Qwen3-0.6B|lora"):
            assert 0.06 < whole < 0.07
        else:
            assert abs(whole) <= 0.011, row["case_id"]
        if row["case_id"].startswith(("Qwen/Qwen2-0.5B-Instruct|lora", "Qwen/Qwen2.5-0.5B|lora|bf16|adamw|b8")):
            assert fit_sequence(*split_pools(events)).limit_bytes / row["min_cap"] - 1 > 0.08
        checked += 1
    assert checked == 19


SIXTH = [r for r in measured_rows(FIXTURES / "min-memory-heldout6-h100.jsonl") if r["kind"] == "train"]
SIXTH_TRACES = FIXTURES / "traces" / "training" / "heldout6"


def test_sixth_sweep_as_measured():
    """The sixth sweep (H100) was chosen and committed before it ran, and measured once both pools were replayed
    under one limit: 5 of 8 within 5%, none under by more than 2%, three over (docs/accuracy.md keeps those
    figures). One was a memory-model error found afterwards: OPT-2.7B LoRA in float32 (+11.3%, its peak +12.4%)
    counted fc2's adapter input apart from ReLU's output, the same tensor (training.py lora_saved_parts): -1.0%
    counted once. The two other misses were LoRA blocks whose adapters' temporaries were written ahead of the
    block's saved tensors; written op by op, Gemma-3-1B is -1.2%, and Qwen2.5-0.5B is as far under (-7.1%) as
    its own trace replays (test_sixth_sweep_traces_replayed_as_one_allocator): 7 of 8 today."""
    errors = {r["case_id"]: compare_min_memory(r)["error"] for r in SIXTH}
    assert len(errors) == 8
    assert sum(abs(e) <= 0.05 for e in errors.values()) == 7
    assert {i for i, e in errors.items() if not -0.02 <= e <= 0.05} == {
        "Qwen/Qwen2.5-0.5B|lora|bf16|adamw|b4|s1024|gc0|ga1"}
    opt = next(r for r in SIXTH if r["case_id"].startswith("facebook/opt-2.7b"))
    assert abs(compare_min_memory(opt)["peak_error"]) < 0.01


def test_sixth_sweep_traces_replayed_as_one_allocator():
    """Each run was traced once more, uncapped (traces/training/heldout6/): replayed, each reserves what the searched
    run reserved uncapped within 0.25% (Qwen2.5-1.5B under autocast 3.1% under), and with both pools under one limit
    seven need the searched cap within 0.5% (Phi-4-mini -0.43%); the Qwen2.5-0.5B LoRA trace needs 7.3% less than
    the search found (the capped runs failed at 16.31 GiB, where the simulation of the same trace completes)."""
    from gpuplan.calc.allocator import fit_whole
    from gpuplan.verify.min_memory import trace_events

    traced = {r["case_id"]: r for r in (json.loads(line) for line in
                                        (SIXTH_TRACES / "traces-heldout6.jsonl").read_text().splitlines())
              if r.get("kind") == "train"}
    for row in SIXTH:
        name = row["case_id"].replace("/", "--").replace("|", "_") + "-default.trace.gz"
        events = trace_events(SIXTH_TRACES / name, traced[row["case_id"]]["allocated_before_case"])
        whole = fit_whole(events).limit_bytes / row["min_cap"] - 1
        if row["case_id"].startswith("Qwen/Qwen2.5-0.5B|lora"):
            assert -0.08 < whole < -0.07
        else:
            assert abs(whole) <= 0.005, row["case_id"]



def _traced_rows() -> list[tuple[dict, Path]]:
    """Each measured run with a recorded uncapped trace (traces/training/, its sub-folders by sweep)."""
    by_name = {r["case_id"].replace("/", "--").replace("|", "_") + "-default.trace.gz": r for r in TRAIN}
    by_name.update({r["trace_file"]: r for r in TRAIN if r.get("trace_file")})
    by_name["gpt2m-lora-fp32-default.trace.gz"] = next(
        r for r in TRAIN if r["case_id"] == "openai-community/gpt2-medium|lora|fp32|adamw|b8|s512|gc0|ga1")
    traces = FIXTURES / "traces" / "training"
    return [(by_name[p.name], p) for p in sorted(traces.rglob("*.trace.gz")) if p.name in by_name]


def test_sequence_needs_what_the_recorded_traces_need():
    """The simulated sequence against the run's own recorded allocations, both replayed through the allocator
    simulation under one limit: the smallest limit within 2% for every traced run. The LoRA runs without
    checkpointing on 152k and 262k vocabularies were 6.0% to 14.1% over while their adapters' temporaries were
    written ahead of the block's saved tensors; op by op (_lora_block_forward) they are within 1.2%. Five
    exceptions, all held out (MISSES), each trace needing its run's searched cap within 0.3%: four under their
    traces (GPT-2 medium LoRA in float32, -4.9%; Llama-3.2-1B LoRA at 4 x 1,024 and 8 x 512 tokens, -5.0% each;
    Qwen3-4B LoRA, -5.2%) and Phi-3-mini LoRA, +6.8%, whose peak is itself 8.3% over."""
    from gpuplan.calc.allocator import fit_whole
    from gpuplan.verify.min_memory import trace_events

    rows = _traced_rows()
    assert len(rows) == 36
    under = {"openai-community/gpt2-medium|lora|fp32|adamw|b8|s512|gc0|ga1",
             "meta-llama/Llama-3.2-1B|lora|bf16|adamw|b4|s1024|gc0|ga1",
             "meta-llama/Llama-3.2-1B-Instruct|lora|bf16|adamw|b8|s512|gc0|ga1",
             "Qwen/Qwen3-4B|lora|bf16|adamw|b2|s1024|gc0|ga1"}
    over = {"microsoft/Phi-3-mini-4k-instruct|lora|bf16|adamw|b2|s1024|gc0|ga1"}
    for row, path in rows:
        spec, setup = _setup(row)
        trace = fit_whole(trace_events(path, row.get("allocated_before_case", 0))).limit_bytes
        model = training_allocator_fit(spec, setup).limit_bytes
        if row["case_id"] in under | over:
            assert 0.04 < abs(model / trace - 1) < 0.07
            assert abs(trace / row["min_cap"] - 1) <= 0.003
            continue
        assert abs(model / trace - 1) <= 0.02, (row["case_id"], model / trace - 1)
        if row["method"] == "lora" and row["precision"] == "bf16" and not row["grad_checkpointing"]:
            assert abs(model / trace - 1) <= 0.012, (row["case_id"], model / trace - 1)


CAPSCAN = [json.loads(line) for line in (FIXTURES / "min-memory-capscan-h100.jsonl").read_text().splitlines()]


def test_capped_runs_are_not_monotone_in_the_cap():
    """The held-out Qwen2.5-0.5B LoRA run at 4 x 1,024 tokens, the one the estimate puts 7.1% under its smallest
    GPU, run again under caps below the searched one (benchmarks/scan_capped_training.py): it passed under 15.875
    GiB, once under 16.0 (and failed there once), and failed under every cap from 16.125 to 17.0 GiB; a search
    in the same process found 17.06 GiB. The simulated sequence needs 15.87 GiB, where the run passed: a card
    with that much for torch runs it, one with 16.5 GiB does not. Llama-3.2-1B LoRA at 4 x 1,024 tokens, 5.0%
    under, failed under every cap below its searched one (19.19 GiB, found again)."""
    qwen = "Qwen/Qwen2.5-0.5B|lora|bf16|adamw|b4|s1024|gc0|ga1"
    runs = [(r["cap_gib"], r["ok"]) for r in CAPSCAN if r.get("step") == "cap" and r["case_id"] == qwen]
    assert runs == [(15.75, False), (15.875, True), (16.0, False), (16.125, False), (16.25, False), (16.5, False),
                    (16.75, False), (17.0, False), (16.0, False), (16.5, False)]
    traced = {r["cap"] / GiB: r["ok"] for r in CAPSCAN if r.get("step") == "trace" and r["case_id"] == qwen}
    assert traced == {16.0: True, 16.5: False}
    search = next(r for r in CAPSCAN if r.get("step") == "search" and r["case_id"] == qwen)
    assert search["min_cap"] / GiB == 17.0625
    row = next(r for r in TRAIN if r["case_id"] == qwen)
    spec, setup = _setup(row)
    assert abs(training_allocator_fit(spec, setup).limit_bytes / GiB - 15.875) < 0.01
    llama = "meta-llama/Llama-3.2-1B|lora|bf16|adamw|b4|s1024|gc0|ga1"
    assert not any(r["ok"] for r in CAPSCAN if r.get("step") == "cap" and r["case_id"] == llama)
    search = next(r for r in CAPSCAN if r.get("step") == "search" and r["case_id"] == llama)
    assert search["min_cap"] == next(r for r in TRAIN if r["case_id"] == llama)["min_cap"]


SEVENTH = [r for r in measured_rows(FIXTURES / "min-memory-heldout7-h100.jsonl") if r["kind"] == "train"]


def test_seventh_sweep_as_measured():
    """The seventh sweep (H100, `--case-set heldout-7`) was chosen and committed before it ran, and measured once the
    LoRA blocks were written op by op, nothing changed since: LoRA without checkpointing on six models and token
    splits not trained that way before. 4 of 6 within 5%; Qwen3-4B 5.3% under and Llama-3.2-1B-Instruct 4.8% under
    (both the sequence's: their traces, traces/training/heldout7/, replay to the searched caps); Phi-3-mini, the
    control whose fused q/k/v is not written op by op, 6.5% over with its peak 8.3% over."""
    errors = {r["case_id"]: compare_min_memory(r)["error"] for r in SEVENTH}
    assert len(errors) == 6
    assert sum(abs(e) <= 0.05 for e in errors.values()) == 4
    assert {i for i, e in errors.items() if e < -0.02} == {
        "Qwen/Qwen3-4B|lora|bf16|adamw|b2|s1024|gc0|ga1",
        "meta-llama/Llama-3.2-1B-Instruct|lora|bf16|adamw|b8|s512|gc0|ga1"}
    phi = next(r for r in SEVENTH if r["case_id"].startswith("microsoft/Phi-3-mini"))
    assert 0.08 < compare_min_memory(phi)["peak_error"] < 0.09
