"""The sampler of vLLM's profile run: FlashInfer or the PyTorch path, per release and as the user sets it
(--flashinfer-sampler / --no-flashinfer-sampler, VLLM_USE_FLASHINFER_SAMPLER)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import gpuplan
from gpuplan.calc.precision import resolve_precision
from gpuplan.cli.app import app
from gpuplan.engines import vllm
from gpuplan.engines.tp import padded_vocab, parallel_layout
from gpuplan.engines.vllm import FLASHINFER_SAMPLER_LINE, profile_activation, vllm_budget
from gpuplan.engines.vllm_releases import flashinfer_supports, profile_sampler, vllm_release
from gpuplan.errors import InputError
from gpuplan.models.sources import resolve_model
from gpuplan.planfile import check
from gpuplan.units import GiB

runner = CliRunner()
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

# What each wheel says (pip download vllm==X --no-deps): v1/sample/ops/topk_topp_sampler.py TopKTopPSampler.__init__
# and envs.py VLLM_USE_FLASHINFER_SAMPLER (FlashInfer unless the variable is 0: "on"; only when it is 1: "opt-in"),
# METADATA Requires-Dist (flashinfer-python a plain dependency: "installed"), forward_cuda / flashinfer_sample
# (which flashinfer call), forward_native (sort before the 0.17.0 Triton kernel).
# (release, FlashInfer by default, installed by pip, flashinfer call, PyTorch path, sampler gpuplan assumes on an H100)
RELEASES = [
    ("0.8.0", True, False, "from_probs", "sort", "sort"),  # and only with flashinfer < 0.2.3
    ("0.8.5", True, False, "from_probs", "sort", "sort"),
    ("0.9.0", True, False, "from_logits", "sort", "sort"),
    ("0.9.2", True, False, "from_logits", "sort", "sort"),
    ("0.10.1.1", True, False, "from_logits", "sort", "sort"),  # flashinfer-python only in the `flashinfer` extra
    ("0.11.0", True, False, "from_logits", "sort", "sort"),
    ("0.11.1", False, True, "from_logits", "sort", "sort"),  # "Users must opt in explicitly"
    ("0.16.0", False, True, "from_logits", "sort", "sort"),
    ("0.17.0", False, True, "from_logits", "in_place", "in_place"),
    ("0.19.0", False, True, "from_logits", "in_place", "in_place"),
    ("0.20.2", False, True, "from_logits", "in_place", "in_place"),  # envs.py: None, read as off
    ("0.21.0", True, True, "from_logits", "in_place", "flashinfer"),  # envs.py: True by default
    ("0.33.0", True, True, "from_logits", "in_place", "flashinfer"),
    ("0.34.0", True, True, "from_logits", "in_place", "flashinfer"),
]


@pytest.mark.parametrize(("version", "on", "installed", "call", "native", "assumed"), RELEASES,
                         ids=[r[0] for r in RELEASES])
def test_release_sampler_defaults(version, on, installed, call, native, assumed):
    release = vllm_release(version)
    assert (release.flashinfer_by_default, release.flashinfer_installed) == (on, installed)
    assert (release.flashinfer_call, release.sampler) == (call, native)
    assert profile_sampler(release, "v1", flashinfer_supported=flashinfer_supports(release, "Hopper")) == assumed
    # The variable, set either way, decides in every release with a sampler pass.
    assert profile_sampler(release, "v1", True) == "flashinfer"
    assert profile_sampler(release, "v1", False) == native


def test_releases_without_a_sampler_pass_and_v0():
    # V1 0.7.x computes logits in the profile run but samples nothing (gpu_model_runner.py profile_run).
    assert profile_sampler(vllm_release("0.7.0"), "v1") is None
    assert profile_sampler(vllm_release("0.7.3"), "v1", True) is None
    # V0 samples with FlashInfer only when VLLM_USE_FLASHINFER_SAMPLER=1, which is not modelled.
    assert profile_sampler(vllm_release("0.9.2"), "v0") == "sort"
    with pytest.raises(InputError, match="V1 engine only"):
        profile_sampler(vllm_release("0.9.2"), "v0", True)


def test_flashinfer_runs_on_the_gpus_its_backend_supports():
    # FlashInferBackend.supports_compute_capability: 7.5-12.1 in 0.21.0-0.23.0, 8.0-12.1 from 0.24.0.
    for version, turing in (("0.21.0", True), ("0.23.0", True), ("0.24.0", False), ("0.34.0", False)):
        release = vllm_release(version)
        assert flashinfer_supports(release, "Turing") is turing
        assert flashinfer_supports(release, "Volta") is False
        assert flashinfer_supports(release, "Hopper") and flashinfer_supports(release, "Blackwell")
        assert flashinfer_supports(release, "CDNA 3") is False  # ROCm is not a CUDA platform
        assert flashinfer_supports(release, None) and flashinfer_supports(release, "unknown")
    assert profile_sampler(vllm_release("0.34.0"), "v1", flashinfer_supported=False) == "in_place"


def test_sampler_bytes_per_logit():
    spec = resolve_model(LLAMA).spec
    p = resolve_precision(spec)
    layout = parallel_layout(spec, p, 1, 1)
    tokens, seqs, vocab = 8192, 256, spec.vocab_size
    assert padded_vocab(vocab) == vocab  # 128,256 is a multiple of 64: no padding term below

    def peak(sampler, call="from_logits"):
        return profile_activation(spec, layout, 2, tokens, seqs, sampler=sampler, flashinfer_call=call)[1]

    rows = tokens * spec.hidden_size * 2 + 2 * seqs * spec.hidden_size * 2
    # bf16 logits 2 + their fp32 copy 4, then: sort 8 + 8 + 2 + 4 more; the Triton kernel 4 + 4 (softmax, the
    # exponential draw); FlashInfer from the logits 4 + 4 (the masked logits, their softmax); from the
    # probabilities (0.7.0-0.8.x) the softmax alone.
    assert peak("sort") == rows + seqs * vocab * 28
    assert peak("in_place") == peak("flashinfer") == rows + seqs * vocab * 14
    assert peak("flashinfer", "from_probs") == rows + seqs * vocab * 10


def test_flashinfer_sampler_shrinks_the_0_10_profile_run():
    spec = resolve_model(LLAMA).spec
    p = resolve_precision(spec)
    kw = {"max_model_len": 8192, "gpu_name": "A100-80GB", "engine_version": "0.10.1"}
    sort = vllm_budget(spec, p, int(79.15 * GiB), **kw)
    fast = vllm_budget(spec, p, int(79.15 * GiB), flashinfer_sampler=True, **kw)
    assert (sort.sampler, fast.sampler) == ("sort", "flashinfer")
    # 256 requests x 128,256 entries x (28 - 14) bytes less at the sampler's peak, which sets the activation peak.
    assert sort.activation_sampler - fast.activation_sampler == 256 * spec.vocab_size * 14
    assert fast.activation_peak == fast.activation_sampler > fast.activation_forward
    assert fast.available_kv - sort.available_kv == sort.activation_peak - fast.activation_peak
    assert fast.log_lines[0] == FLASHINFER_SAMPLER_LINE and FLASHINFER_SAMPLER_LINE not in sort.log_lines
    # From 0.21 FlashInfer is the default, and it keeps the bytes of the Triton path it replaces.
    on = vllm_budget(spec, p, int(79.19 * GiB), max_model_len=8192, gpu_name="H100")
    off = vllm_budget(spec, p, int(79.19 * GiB), max_model_len=8192, gpu_name="H100", flashinfer_sampler=False)
    assert (on.sampler, off.sampler) == ("flashinfer", "in_place")
    assert on.kv_cache_tokens == off.kv_cache_tokens and on.log_lines[1:] == off.log_lines


def test_the_estimate_names_the_sampler_and_follows_the_gpu():
    kw = {"engine": "vllm", "max_model_len": 8192}
    assert gpuplan.estimate(LLAMA, gpu="H100", **kw).serving.sampler == "flashinfer"
    assert gpuplan.estimate(LLAMA, gpu="T4", **kw).serving.sampler == "in_place"  # Turing, 0.34
    assert gpuplan.estimate(LLAMA, gpu="T4", engine_version="0.23.0", **kw).serving.sampler == "flashinfer"
    assert gpuplan.estimate(LLAMA, gpu="H100", flashinfer_sampler=False, **kw).serving.sampler == "in_place"
    assert gpuplan.estimate(LLAMA, gpu="H100", engine_version="0.7.0", **kw).serving.sampler == "sort"  # V0
    assert gpuplan.estimate(LLAMA, gpu="H100", engine="sglang", max_model_len=8192).serving.sampler is None


def test_cli_flag_and_json():
    base = ["estimate", LLAMA, "--engine", "vllm", "--gpu", "A100-80GB", "--engine-version", "0.10.1",
            "--max-model-len", "8192", "--format", "json"]
    default = json.loads(runner.invoke(app, base).stdout)
    flag = json.loads(runner.invoke(app, [*base, "--flashinfer-sampler"]).stdout)
    assert default["serving"]["sampler"] == "sort" and flag["serving"]["sampler"] == "flashinfer"
    assert flag["serving"]["kv_cache_tokens"] > default["serving"]["kv_cache_tokens"]
    assert flag["serving"]["log_lines"][0] == FLASHINFER_SAMPLER_LINE
    text = runner.invoke(app, base[:-2] + ["--flashinfer-sampler"])
    assert text.exit_code == 0 and "profile run sampled with FlashInfer" in text.stdout
    off = runner.invoke(app, ["estimate", LLAMA, "--engine", "vllm", "--gpu", "H100", "--max-model-len", "8192",
                              "--no-flashinfer-sampler"])
    assert "in-place Triton top-k/top-p" in off.stdout
    v0 = runner.invoke(app, ["estimate", LLAMA, "--engine", "vllm", "--gpu", "H100", "--engine-version", "0.6.6",
                             "--flashinfer-sampler"])
    assert v0.exit_code != 0 and "V1 engine only" in v0.output and "Traceback" not in v0.output
    sg = runner.invoke(app, ["estimate", LLAMA, "--engine", "sglang", "--gpu", "H100", "--flashinfer-sampler"])
    assert sg.exit_code != 0 and "--flashinfer-sampler" in sg.output


def test_plan_file_key(tmp_path):
    path = tmp_path / "gpuplan.yaml"
    path.write_text(f"""\
defaults: {{engine: vllm, gpu: A100-80GB, engine_version: "0.10.1", max_model_len: 8k}}
deployments:
  - {{name: sort, model: {LLAMA}}}
  - {{name: flashinfer, model: {LLAMA}, flashinfer_sampler: true}}
""")
    sort, fast = check(path).deployments
    assert (sort.estimate.serving.sampler, fast.estimate.serving.sampler) == ("sort", "flashinfer")
    assert fast.estimate.serving.kv_cache_tokens > sort.estimate.serving.kv_cache_tokens


def test_launch_command_sets_the_variable():
    result = gpuplan.estimate(LLAMA, engine="vllm", gpu="H100", max_model_len=8192, flashinfer_sampler=False)
    cmd = vllm.launch_command(LLAMA, result, nodes=1, dtype=None, kv_cache_dtype=None,
                              options=vllm.Options(flashinfer_sampler=False))
    assert cmd[0].startswith(f"VLLM_USE_FLASHINFER_SAMPLER=0 vllm serve {LLAMA} ")
    plain = vllm.launch_command(LLAMA, result, nodes=1, dtype=None, kv_cache_dtype=None, options=vllm.Options())
    assert plain[0].startswith("vllm serve ")
