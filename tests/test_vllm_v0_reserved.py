"""The V0 profile run's reserved peak, charged by vLLM 0.3.1-0.6.3, and its allocated peak, charged by 0.6.5-0.10.2
(gpuplan.engines.vllm_v0_reserved)."""

import time

from gpuplan.calc.allocator import replay
from gpuplan.calc.precision import resolve_precision
from gpuplan.engines.tp import parallel_layout
from gpuplan.engines.vllm import vllm_budget
from gpuplan.engines.vllm_v0_reserved import (
    CUBLAS_WORKSPACE_PRE_SM90,
    profile_events,
    profile_reservation,
    profile_shape,
)
from gpuplan.models.sources import resolve_model

GiB = 1024**3
LLAMA3_8B = "meta-llama/Meta-Llama-3-8B-Instruct"


def _shape(config: str = LLAMA3_8B, version=(0, 4, 1), tp: int = 1, tokens: int = 8192, seqs: int = 256):
    spec = resolve_model(config).spec
    p = resolve_precision(spec)
    layout = parallel_layout(spec, p, tp, 1)
    return spec, profile_shape(spec, layout, version, e=p.compute_bytes, tokens=tokens, seqs=seqs,
                               layers=spec.num_hidden_layers, last_stage=True)


def test_the_peak_of_live_tensors_is_the_top_k_top_p_step():
    # vLLM 0.4.1 layers/sampler.py _apply_top_k_top_p, on the bf16 logits of 256 rows x 128,256 entries: beside the
    # logits held by execute_model (2 bytes an entry), the sorted values (2), their int64 indices (8), the top-k
    # mask (1), the softmax and cumsum of the sorted values (2 + 2), the top-p mask (1), the inverse permutation
    # (8) and the re-ordered logits (2): 28 bytes an entry, plus the [vocab] int64 arange, the model's [8192, 4096]
    # hidden states and the cuBLAS workspace.
    _, s = _shape()
    entries = 256 * 128_256
    expected = CUBLAS_WORKSPACE_PRE_SM90 + 8192 * 4096 * 2 + 28 * entries + 128_256 * 8
    assert profile_reservation(s).peak_allocated == expected


def test_everything_but_the_workspace_is_freed_and_nothing_is_handed_back():
    # mem_get_info is read after profile_run with no empty_cache in between (worker.py
    # determine_num_available_blocks, 0.3.3 to 0.6.3): what is reserved then is the run's peak reservation.
    _, s = _shape()
    run = replay(profile_events(s))
    assert run.allocated == CUBLAS_WORKSPACE_PRE_SM90
    assert run.reserved == run.peak_reserved == profile_reservation(s).peak_reserved
    # Segments cut for the forward's [T, 2I], [T, I], [T, q + 2kv] and [T, h] temporaries do not serve the sampler's
    # [256, vocab] tensors without new ones: the reservation is well above the live peak.
    assert run.peak_reserved - run.peak_allocated > GiB // 4


def test_the_sampler_and_attention_follow_the_release():
    flags = {v: _shape(version=v)[1] for v in ((0, 3, 3), (0, 4, 0), (0, 4, 1), (0, 5, 4), (0, 6, 0), (0, 6, 3))}
    assert [(s.fp32_logits, s.scatter_values, s.attention_buffer) for s in flags.values()] == [
        (False, False, False), (False, False, False), (False, False, True), (False, False, True),
        (True, False, True), (True, True, False)]
    # The fp32 cast of 0.6.0 adds the fp32 copy and doubles the four sampler tensors of the logits' width: 12 bytes
    # an entry. The allocator counts as allocated the rest of a large block it does not split (1 MiB or less a
    # tensor, CUDACachingAllocator should_split), so the peaks differ by that much more at most.
    entries = 256 * 128_256
    grown = profile_reservation(flags[(0, 6, 0)]).peak_allocated - profile_reservation(flags[(0, 5, 4)]).peak_allocated
    assert 0 <= grown - entries * (4 + 4 * (4 - 2)) < 10 * 1024**2


def test_the_0_6_5_era_keeps_the_0_6_3_sequence():
    # 0.6.5 and 0.6.6 layers/sampler.py: the fp32 cast and one scatter_ of the values, as in 0.6.3 (and 0.8.5); the
    # FlashAttention kernel writes into attention/layer.py's one empty_like(query) (use_output, out=).
    flags = {v: _shape(version=v)[1] for v in ((0, 6, 3), (0, 6, 5), (0, 6, 6), (0, 8, 5), (0, 10, 2))}
    assert {(s.fp32_logits, s.scatter_values, s.attention_buffer) for s in flags.values()} == {(True, True, False)}
    # The live peak is the top-k/top-p step on fp32 logits: beside the bf16 logits (2 bytes an entry) and their fp32
    # copy (4), the sorted values (4), their int64 indices (8), the two masks (1 + 1), the softmax and cumsum (4 + 4)
    # and the re-ordered logits (4): 32 bytes an entry, plus the hidden states and the cuBLAS workspace; up to the
    # unsplit rests of large blocks (1 MiB or less a tensor, CUDACachingAllocator should_split).
    entries = 256 * 128_256
    expected = CUBLAS_WORKSPACE_PRE_SM90 + 8192 * 4096 * 2 + 32 * entries
    assert 0 <= profile_reservation(flags[(0, 6, 5)]).peak_allocated - expected < 10 * 1024**2


def test_llama_py_lets_gate_up_die_from_0_6_5_and_qwen2_py_does_not():
    # LlamaMLP.forward rebinds x to the activation in llama.py of 0.6.5, 0.6.6 and 0.8.5 ("x, _ =
    # self.gate_up_proj(x); x = self.act_fn(x)"); 0.4.1 names it gate_up, as Qwen2MLP still does in 0.6.5-0.8.5.
    assert _shape(version=(0, 4, 1))[1].mlp_keeps_gate_up and _shape(version=(0, 6, 3))[1].mlp_keeps_gate_up
    assert not _shape(version=(0, 6, 5))[1].mlp_keeps_gate_up
    assert _shape("Qwen/Qwen2.5-3B-Instruct", version=(0, 6, 6))[1].mlp_keeps_gate_up
    # At 32,768 tokens the MLP is the run's peak: with gate_up freed before down_proj's [T, h] is made, the peak is
    # gate_up beside the activation ([T, 2I] + [T, I]), one [T, h] below gate_up, activation and down_proj together.
    kept = _shape(version=(0, 6, 5), tokens=32_768)[1]
    freed = profile_reservation(kept).peak_allocated
    held = profile_reservation(kept._replace(mlp_keeps_gate_up=True)).peak_allocated
    assert held - freed == 32_768 * 4096 * 2


def test_opt_writes_its_own_modules_and_tp_gathers_the_logits():
    spec, s = _shape("facebook/opt-125m", (0, 4, 0), tokens=2048)
    assert s.module == "opt" and s.padded_vocab == 50_304 and s.vocab == 50_272
    assert profile_reservation(s).peak_reserved > profile_reservation(s).peak_allocated
    _, one = _shape(tp=1)
    _, two = _shape(tp=2)
    assert (two.q_width, two.kv_width, two.intermediate) == (2048, 512, 7168)
    # The driver gathers the full [256, vocab] logits, so the sampler's live peak is that of TP=1 (up to the
    # unsplit rests of its blocks); the forward's temporaries are halved, and so is what they leave reserved.
    assert abs(profile_reservation(two).peak_allocated - profile_reservation(one).peak_allocated) < 10 * 1024**2
    assert profile_reservation(two).peak_reserved < profile_reservation(one).peak_reserved


def test_models_not_written_out_keep_the_allocated_peak():
    spec = resolve_model("Qwen/Qwen1.5-MoE-A2.7B-Chat").spec
    p = resolve_precision(spec)
    assert profile_shape(spec, parallel_layout(spec, p, 1, 1), (0, 4, 1), e=2, tokens=8192, seqs=256,
                         layers=spec.num_hidden_layers, last_stage=True) is None
    b = vllm_budget(spec, p, 80 * GiB, engine="v0", engine_version="0.4.1", max_model_len=8192)
    assert b.activation_peak == max(b.activation_forward, b.activation_sampler)


def test_each_v0_rule_charges_its_own_peak():
    spec = resolve_model(LLAMA3_8B).spec
    p = resolve_precision(spec)
    kw = {"engine": "v0", "max_model_len": 8192, "gpu_memory_utilization": 0.9}
    # 0.2.5 (total - free) and 0.6.4 (allocated peak after empty_cache) keep the generic formula.
    for version in ("0.2.5", "0.6.4"):
        b = vllm_budget(spec, p, 24 * GiB, engine_version=version, **kw)
        assert b.activation_peak == max(b.activation_forward, b.activation_sampler), version
    b = vllm_budget(spec, p, 24 * GiB, engine_version="0.4.1", **kw)
    assert b.activation_peak == profile_reservation(_shape()[1]).peak_reserved
    assert b.available_kv == b.requested - b.weights - b.activation_peak - b.non_torch
    # 0.6.5-0.10.2 (utils.py memory_profiling): the rise of allocated_bytes.all.peak, the replay's live peak.
    for version, parsed in (("0.6.6", (0, 6, 6)), ("0.8.5", (0, 8, 5))):
        b = vllm_budget(spec, p, 24 * GiB, engine_version=version, **kw)
        run = profile_reservation(_shape(version=parsed)[1])
        assert b.activation_peak == run.peak_allocated < run.peak_reserved, version
        assert b.activation_peak > max(b.activation_forward, b.activation_sampler), version


def test_the_replay_is_fast_enough_for_the_estimate_path():
    _, s = _shape("meta-llama/Llama-3.3-70B-Instruct", tokens=8192)
    profile_reservation.cache_clear()
    start = time.perf_counter()
    profile_reservation(s)
    assert time.perf_counter() - start < 0.1
