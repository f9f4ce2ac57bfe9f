"""State pools of hybrid (Mamba / gated-DeltaNet + attention) models in SGLang, vLLM and llama.cpp.

Every expected byte count below is worked out by hand from the engines' source formulas (cited in
gpuplan/engines/sglang_state.py, vllm.py and llamacpp.py) and the configs' numbers, written out as literals.

Models:
* Qwen3-Next-80B-A3B: tests/fixtures/architectures/qwen3_next.json's ``config`` (transformers' Qwen3NextConfig
  defaults, the 80B-A3B shape: 48 layers, every 4th full attention with 2 KV heads of 256, 36 gated-DeltaNet
  layers of 32 value heads x 128 x 128 with 16 key heads of 128, conv kernel 4).
* NVIDIA-Nemotron-3-Nano-30B-A3B (bundled catalog): 23 Mamba-2 layers of 64 heads x 64 x d_state 128, 8 groups,
  conv kernel 4; 6 attention layers of 2 KV heads x 128; config mamba_ssm_cache_dtype float32.
* Falcon-H1: tests/fixtures/architectures/falcon_h1.json's ``config`` (FalconH1Config defaults: 32 layers, each
  attention with 8 KV heads of 128 beside Mamba-2 with 128 heads x 8 x d_state 256, 1 group, d_ssm 1024, kernel 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_gguf import llama_like

import gpuplan
from gpuplan.calc.precision import resolve_precision
from gpuplan.engines.llamacpp import LlamaCppSettings, estimate_llamacpp
from gpuplan.engines.sglang import sglang_budget
from gpuplan.engines.vllm import hybrid_state_pages, state_dtypes
from gpuplan.errors import InputError
from gpuplan.models.catalog import load_catalog
from gpuplan.models.gguf import load_gguf_model
from gpuplan.models.sources import parse_config, read_json_file

GiB = 2**30
FIXTURES = Path(__file__).parent / "fixtures" / "architectures"
NEMOTRON = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"


def fixture_spec(name: str):
    return parse_config(json.loads((FIXTURES / f"{name}.json").read_text())["config"], label=name)


def catalog_spec(model_id: str):
    return parse_config(read_json_file(load_catalog().get(model_id).path), label=model_id)


def test_nemotron_nano_layer_counts():
    # hybrid_override_pattern MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME: 23 M, 6 *, 23 E
    spec = catalog_spec(NEMOTRON)
    kinds = [lc.kind for lc in spec.layer_caches]
    assert (kinds.count("state"), kinds.count("attention")) == (23, 6)


# ---- SGLang 0.5.23 ---------------------------------------------------------------------------------------------

def _pools(b, per_request: int, cell: int, context_len: int, slots_per_request: int = 5) -> tuple[int, int, int]:
    """kv_cache_configurator.py _handle_max_mamba_cache and resolve_max_num_reqs, written out."""
    slots = int((b.rest_memory * 0.9 / (1 + 0.9) - per_request) // per_request)
    tokens = (b.rest_memory - (slots + 1) * per_request) // cell
    running = min(max(min(int(tokens / context_len * 512), 4096), 2048), tokens // 2, slots // slots_per_request)
    return slots, tokens, running


def test_sglang_qwen3_next_tp4():
    spec = fixture_spec("qwen3_next")
    b = sglang_budget(spec, resolve_precision(spec, "bf16"), 80 * GiB, tp=4, mem_fraction_static=0.85,
                      init_overhead_bytes=0, context_len=32_768)
    assert b.rest_memory == int(80 * GiB - b.weights - 80 * GiB * (1 - 0.85))
    # per request and rank: 36 layers x (conv (2 x 16 x 128 + 32 x 128) / 4 x (4 - 1) x 2 bytes (bf16)
    #                                     + temporal 32 / 4 x 128 x 128 x 4 bytes (float32))
    per_request = 36 * (2048 * 3 * 2 + 8 * 128 * 128 * 4)
    assert per_request == 19_316_736 == b.state.per_request
    # KV cell: 12 full-attention layers x max(1, 2 // 4) KV head x (256 + 256) x 2 bytes
    assert b.cell_size == 12 * 1 * 512 * 2 == 12_288
    slots, tokens, running = _pools(b, per_request, 12_288, 32_768)
    assert (b.state.slots, b.max_total_num_tokens, b.max_running_requests) == (slots, tokens, running)
    # The weights are the segments their load reserves (weight_blocks): 810 slots while they were their bytes.
    assert (slots, tokens, running) == (809, 1_416_386, 161)
    assert b.state.pool_bytes == 810 * 19_316_736  # slots + 1
    assert b.k_size == (1_416_386 + 1) * 12_288 // 2


def test_sglang_nemotron_nano():
    spec = catalog_spec(NEMOTRON)
    b = sglang_budget(spec, resolve_precision(spec, "bf16"), 80 * GiB, mem_fraction_static=0.85,
                      init_overhead_bytes=0, context_len=8192)
    # 23 Mamba-2 layers x (conv (64 x 64 + 2 x 8 x 128) x 3 x 2 bytes + temporal 64 x 64 x 128 x 4 bytes);
    # SGLang reads mamba_ssm_dtype, not Nemotron's mamba_ssm_cache_dtype, so float32 is its own default
    assert b.state.per_request == 23 * (6144 * 3 * 2 + 64 * 64 * 128 * 4) == 49_082_368
    assert b.cell_size == 6 * 2 * (128 + 128) * 2 == 6144
    assert (b.state.slots, b.max_total_num_tokens, b.max_running_requests) == _pools(b, 49_082_368, 6144, 8192)
    assert (b.state.slots, b.max_total_num_tokens, b.max_running_requests) == (92, 828_893, 18)  # 94 slots as bytes


def test_sglang_falcon_h1_every_layer_both():
    spec = fixture_spec("falcon_h1")
    b = sglang_budget(spec, resolve_precision(spec, "bf16"), 80 * GiB, mem_fraction_static=0.85,
                      init_overhead_bytes=0, context_len=8192)
    # 32 layers x (conv (1024 + 2 x 1 x 256) x 3 x 2 bytes + temporal 128 x 8 x 256 x 4 bytes)
    assert b.state.per_request == 32 * (1536 * 3 * 2 + 128 * 8 * 256 * 4) == 33_849_344
    # and every layer's attention: 32 x 8 KV heads x (128 + 128) x 2 bytes
    assert b.cell_size == 32 * 8 * 256 * 2 == 131_072
    assert (b.state.slots, b.max_total_num_tokens, b.max_running_requests) == (781, 224_400, 156)  # 782 as bytes


def test_sglang_ssm_dtype_and_fixed_slots():
    spec = catalog_spec(NEMOTRON)
    precision = resolve_precision(spec, "bf16")
    b = sglang_budget(spec, precision, 80 * GiB, mem_fraction_static=0.85, init_overhead_bytes=0,
                      context_len=8192, mamba_ssm_dtype="bfloat16", max_mamba_cache_size=50)
    per_request = 23 * (6144 * 3 * 2 + 64 * 64 * 128 * 2)
    assert b.state.per_request == per_request == 24_965_120
    assert b.state.slots == 50 and b.state.pool_bytes == 51 * per_request
    assert b.max_total_num_tokens == (b.rest_memory - 51 * per_request) // 6144
    assert b.max_running_requests == 50 // 5
    ratio = sglang_budget(spec, precision, 80 * GiB, mem_fraction_static=0.85, init_overhead_bytes=0,
                          context_len=8192, mamba_full_memory_ratio=0.5)
    assert ratio.state.slots == int((ratio.rest_memory * 0.5 / 1.5 - 49_082_368) // 49_082_368)


def test_sglang_estimate_caps_concurrency_by_the_state_pool():
    est = gpuplan.estimate(NEMOTRON, engine="sglang", gpu="H100", seq=8192, batch=64)
    s = est.serving
    assert s.max_num_seqs is not None and s.max_num_seqs < 64
    assert s.max_concurrency == s.max_num_seqs  # the KV pool holds far more than max_running_requests
    assert not est.fits and f"the state pool allows {s.max_num_seqs}" in est.fit_reason
    assert any(line.startswith("Mamba Cache is allocated. max_mamba_cache_size: ") for line in s.log_lines)
    # the state pool is part of the cache bytes
    assert est.kv_cache_bytes > s.kv_cache_tokens * 6144


def test_sglang_refuses_when_the_state_pool_holds_no_request():
    # Qwen3.5-35B-A3B on one H100 at SGLang's default fraction: the weights (the segments their load reserves; 4
    # slots while they were counted as their bytes) leave room for 3 state slots, and a request of Qwen3.5
    # (extra-buffer radix cache) takes 5
    est = gpuplan.estimate("Qwen/Qwen3.5-35B-A3B", engine="sglang", gpu="H100")
    assert est.serving.max_num_seqs == 0 and est.serving.max_concurrency == 0
    assert est.fit_reason == ("SGLang's state pool holds 3 request slots, fewer than the 5 one running request "
                              "takes: it refuses to start")
    assert est.serving.log_lines[-1].startswith("Hybrid (mamba/linear-attention) state cache is too small")


def test_state_flags_need_a_hybrid_model():
    with pytest.raises(InputError, match="--mamba-ssm-dtype applies to models with Mamba"):
        gpuplan.estimate("meta-llama/Llama-3.1-8B", engine="sglang", gpu="H100", mamba_ssm_dtype="bfloat16")
    with pytest.raises(InputError, match="--mamba-cache-dtype applies to models with Mamba"):
        gpuplan.estimate("meta-llama/Llama-3.1-8B", engine="vllm", gpu="H100", mamba_cache_dtype="float32")


# ---- vLLM 0.34.0 -----------------------------------------------------------------------------------------------

def test_vllm_state_dtypes():
    nemotron, falcon, qwen = catalog_spec(NEMOTRON), fixture_spec("falcon_h1"), fixture_spec("qwen3_next")
    # NemotronHForCausalLMConfig: auto -> the config's mamba_ssm_cache_dtype (float32)
    assert state_dtypes(nemotron, "bf16").model_dump() == {"conv": "bf16", "ssm": "float32"}
    assert state_dtypes(nemotron, "bf16", mamba_ssm_cache_dtype="bfloat16").ssm == "bfloat16"
    # others: auto follows --mamba-cache-dtype, itself the model dtype at auto
    assert state_dtypes(falcon, "bf16").model_dump() == {"conv": "bf16", "ssm": "auto"}
    assert state_dtypes(qwen, "fp16", mamba_cache_dtype="float32").model_dump() == {"conv": "float32", "ssm": "auto"}


@pytest.mark.parametrize(("name", "ssm", "page"), [
    # conv (1024 + 2 x 256) x 3 x 2 bytes + temporal 128 x 8 x 256 x 2 bytes (bf16, the model dtype)
    ("falcon_h1", "auto", 1536 * 3 * 2 + 128 * 8 * 256 * 2),
    ("falcon_h1", "float32", 1536 * 3 * 2 + 128 * 8 * 256 * 4),
    # conv (2 x 16 x 128 + 32 x 128) x 3 x 2 bytes + temporal 32 x 128 x 128 x 2 / 4 bytes
    ("qwen3_next", "auto", 8192 * 3 * 2 + 32 * 128 * 128 * 2),
    ("qwen3_next", "float32", 8192 * 3 * 2 + 32 * 128 * 128 * 4),
])
def test_vllm_state_page_by_dtype(name, ssm, page):
    spec = fixture_spec(name)
    # an fp8 KV cache leaves the state in the model dtype: the KV element size (1) is not the state's
    pages = hybrid_state_pages(spec, 1, 1, 16, 8192, state_dtypes=state_dtypes(spec, "bf16",
                                                                               mamba_ssm_cache_dtype=ssm))
    assert pages.state_page_size == page


def test_vllm_nemotron_budget_reads_the_config_dtype():
    spec = catalog_spec(NEMOTRON)
    est = gpuplan.estimate(NEMOTRON, engine="vllm", gpu="H100", max_model_len=8192)
    flag = gpuplan.estimate(NEMOTRON, engine="vllm", gpu="H100", max_model_len=8192,
                            mamba_ssm_cache_dtype="bfloat16")
    # state page: conv 6144 x 3 x 2 + temporal 64 x 64 x 128 x 4 (float32) = 2,134,016 bytes; the attention page
    # of one token is 2 x 256 x 2 = 1024 bytes, so the block grows to 16 x cdiv(2,134,016, 16 x 1024) = 2096
    assert hybrid_state_pages(spec, 1, 2, 64, 8192, state_dtypes=state_dtypes(spec, "bf16")).block_size == 2096
    assert any("Setting attention block size to 2096 tokens" in line for line in est.serving.log_lines)
    # bfloat16 temporal state: 6144 x 3 x 2 + 64 x 64 x 128 x 2 = 1,085,440 -> 16 x cdiv(1,085,440, 16,384) = 1072
    assert any("Setting attention block size to 1072 tokens" in line for line in flag.serving.log_lines)
    assert flag.serving.kv_cache_tokens > est.serving.kv_cache_tokens


def test_launch_commands_spell_the_state_flags():
    from gpuplan.engines import sglang, vllm

    result = gpuplan.estimate(NEMOTRON, engine="vllm", gpu="H100", max_model_len=8192)
    cmd = vllm.launch_command(NEMOTRON, result, nodes=1, dtype=None, kv_cache_dtype=None,
                              options=vllm.Options(mamba_ssm_cache_dtype="bfloat16"))
    assert cmd[0].endswith("--mamba-ssm-cache-dtype bfloat16")
    assert "--mamba" not in vllm.launch_command(NEMOTRON, result, nodes=1, dtype=None, kv_cache_dtype=None,
                                                options=vllm.Options())[0]
    cmd = sglang.launch_command(NEMOTRON, result, nodes=1, dtype=None, kv_cache_dtype=None,
                                options=sglang.Options(mamba_ssm_dtype="bfloat16", mamba_full_memory_ratio=0.5,
                                                       max_mamba_cache_size=64))
    assert cmd[0].endswith("--mamba-ssm-dtype bfloat16 --mamba-full-memory-ratio 0.5 --max-mamba-cache-size 64")


# ---- llama.cpp -------------------------------------------------------------------------------------------------

def _ssm_meta(arch: str, **keys: int) -> dict:
    return {f"{arch}.{k.replace('__', '.')}": v for k, v in keys.items()}


def qwen3_next_gguf(path: Path) -> Path:
    a = "qwen3next"
    return llama_like(path / "qwen3next.gguf", arch=a, vocab=151936, embd=2048, layers=48, heads=16, kv_heads=2,
                      ff=5120, ctx=262144,
                      extra_meta=_ssm_meta(a, attention__key_length=256, attention__value_length=256,
                                           ssm__conv_kernel=4, ssm__inner_size=4096, ssm__state_size=128,
                                           ssm__group_count=16, ssm__time_step_rank=32, full_attention_interval=4))


def test_llamacpp_qwen3_next_state_and_attention_only_kv(tmp_path):
    mem = estimate_llamacpp(load_gguf_model(qwen3_next_gguf(tmp_path)), LlamaCppSettings(ctx_size=8192, parallel=4))
    # n_embd_r = (4 - 1) x (4096 + 2 x 16 x 128) = 24,576; n_embd_s = 128 x 4096 = 524,288; f32, 4 sequences,
    # 36 recurrent layers (every layer i with (i + 1) % 4 != 0)
    assert mem.components["recurrent_gpu"] == 36 * 4 * (24_576 + 524_288) * 4 == 316_145_664
    # KV only on the 12 full-attention layers: 8192 cells x 2 heads x (256 K + 256 V) x 2 bytes (f16)
    assert mem.components["kv_gpu"] == 12 * 8192 * 2 * 512 * 2 == 201_326_592
    assert mem.gpu_kv_bytes == 316_145_664 + 201_326_592
    one = estimate_llamacpp(load_gguf_model(qwen3_next_gguf(tmp_path)), LlamaCppSettings(ctx_size=8192))
    assert one.components["recurrent_gpu"] == 36 * 1 * 548_864 * 4 == 79_036_416


def test_llamacpp_nemotron_h_layers(tmp_path):
    a = "nemotron_h"
    # layers: mamba, MLP, attention, mamba, MLP, mamba (head_count_kv and feed_forward_length per layer)
    path = llama_like(tmp_path / "nemotron.gguf", arch=a, vocab=131072, embd=2688, layers=6, heads=32, kv_heads=2,
                      ff=1856, ctx=262144,
                      extra_meta={**_ssm_meta(a, attention__key_length=128, attention__value_length=128,
                                              ssm__conv_kernel=4, ssm__inner_size=4096, ssm__state_size=128,
                                              ssm__group_count=8, ssm__time_step_rank=64),
                                  f"{a}.attention.head_count_kv": [0, 0, 2, 0, 0, 0],
                                  f"{a}.feed_forward_length": [0, 1856, 0, 0, 1856, 0]})
    mem = estimate_llamacpp(load_gguf_model(path), LlamaCppSettings(ctx_size=4096))
    # recurrent: layers 0, 3, 5; n_embd_r = 3 x (4096 + 2 x 8 x 128) = 18,432, n_embd_s = 128 x 4096 = 524,288
    assert mem.components["recurrent_gpu"] == 3 * (18_432 + 524_288) * 4 == 6_512_640
    # KV: layer 2 only, 4096 cells x 2 heads x (128 + 128) x 2 bytes
    assert mem.components["kv_gpu"] == 4096 * 2 * 256 * 2 == 4_194_304


def test_llamacpp_falcon_h1_keeps_both_and_host_placement(tmp_path):
    a = "falcon-h1"
    path = llama_like(tmp_path / "falcon-h1.gguf", arch=a, vocab=128000, embd=4096, layers=32, heads=32, kv_heads=8,
                      ff=14336, ctx=8192,
                      extra_meta=_ssm_meta(a, ssm__conv_kernel=4, ssm__inner_size=1024, ssm__state_size=256,
                                           ssm__group_count=1, ssm__time_step_rank=128))
    mem = estimate_llamacpp(load_gguf_model(path), LlamaCppSettings(ctx_size=8192, parallel=2))
    # every layer: state (3 x (1024 + 2 x 256) + 256 x 1024) x 4 bytes x 2 sequences, and KV
    assert mem.components["recurrent_gpu"] == 32 * 2 * (4608 + 262_144) * 4 == 68_288_512
    assert mem.components["kv_gpu"] == 32 * 8192 * 8 * 256 * 2 == 1_073_741_824
    host = estimate_llamacpp(load_gguf_model(path), LlamaCppSettings(ctx_size=8192, parallel=2, kv_offload=False))
    assert (host.components["recurrent_gpu"], host.components["recurrent_host"]) == (0, 68_288_512)


def test_llamacpp_non_hybrid_has_no_state(tmp_path):
    from test_gguf import llama3_8b

    mem = estimate_llamacpp(load_gguf_model(llama3_8b(tmp_path)), LlamaCppSettings(ctx_size=4096))
    assert "recurrent_gpu" not in mem.components
