"""A setup that cannot run never fits, says why, and ends with the changes that would make it fit, each one a
real estimate."""

from __future__ import annotations

from typer.testing import CliRunner

import gpuplan
from gpuplan.advice import estimate_with_advice, train_with_advice
from gpuplan.cli.app import app

LLAMA = "meta-llama/Llama-2-7b"


def test_each_suggestion_is_the_estimate_of_its_flags():
    r = estimate_with_advice(LLAMA, dtype="fp16", batch=8, seq=4096, gpu="RTX 4090")
    assert r.fits is False and r.fit_reason.startswith("needs ")
    by_flag = {s.flag: s for s in r.suggestions}
    assert by_flag["--kv-dtype fp8"].total_bytes == gpuplan.estimate(
        LLAMA, dtype="fp16", kv_dtype="fp8", batch=8, seq=4096, gpu="RTX 4090").total_bytes
    batch = next(s for s in r.suggestions if s.flag.startswith("--batch "))
    b = int(batch.flag.split()[1])
    assert batch.fits and not gpuplan.estimate(LLAMA, dtype="fp16", batch=b + 1, seq=4096, gpu="RTX 4090").fits
    seq = next(s for s in r.suggestions if s.flag.startswith("--seq "))
    assert seq.fits and seq.total_bytes <= seq.gpu_memory_bytes


def test_nothing_is_suggested_for_what_fits():
    assert estimate_with_advice(LLAMA, dtype="fp16", seq=4096, gpu="H100").suggestions == []


def test_a_pinned_kv_cache_larger_than_the_gpu_does_not_fit_and_the_largest_that_does_is_named():
    r = estimate_with_advice("llama-3.1-8b", engine="vllm", gpu="L4", kv_cache_memory="30GiB", max_model_len=8192)
    assert r.fits is False and "the GPU has" in r.fit_reason and r.headroom_bytes < 0
    pinned = next(s for s in r.suggestions if s.flag.startswith("--kv-cache-memory"))
    assert pinned.fits and pinned.total_bytes <= pinned.gpu_memory_bytes


def test_a_context_beyond_the_models_does_not_fit_unless_the_engine_is_told_to_allow_it(monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    r = gpuplan.estimate("llama-3.1-8b", engine="vllm", gpu="H200", max_model_len=262144)
    assert r.fits is False and "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1" in r.fit_reason
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    assert gpuplan.estimate("llama-3.1-8b", engine="vllm", gpu="H200", max_model_len=262144).fits is True


def test_training_suggests_a_recipe_that_keeps_the_effective_batch():
    r = train_with_advice("Qwen/Qwen2.5-7B", batch=8, seq=4096, gpu="H100")
    assert r.fits is False
    lean = next(s for s in r.suggestions if s.flag.startswith("--method qlora --grad-checkpointing"))
    words = lean.flag.split()
    batch, steps = int(words[words.index("--batch") + 1]), int(words[words.index("--grad-accumulation") + 1])
    assert lean.fits and batch * steps == 8


def test_the_cli_says_why_and_what_would_fit():
    result = CliRunner().invoke(app, ["estimate", LLAMA, "--dtype", "fp16", "--batch", "8", "--seq", "4096",
                                      "--gpu", "RTX 4090"])
    assert result.exit_code == 1
    assert "does not fit — needs" in result.stdout and "To fit:" in result.stdout
    assert "--pipeline-parallel-size 2" in result.stdout
