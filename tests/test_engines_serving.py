"""vLLM and SGLang KV-cache budgets: unit checks, and a replay of the startup logs in
tests/fixtures/serving_logs.yaml.

Each replayable log case is run through gpuplan's model with the inputs the log states; anything the log
does not state takes the engine's documented default (listed in ``_inputs``). The prediction is compared
with what the engine printed: KV tokens, else GPU blocks, else the KV pool in GiB, else (report tables that
print only the components) the pool those components leave. Nothing here is fitted to a case.
``benchmarks/serving_report.py`` prints the same replay as the table in docs/serving.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from gpuplan.calc.precision import resolve_precision
from gpuplan.calc.weights import tensor_bytes, weights_bytes
from gpuplan.engines.sglang import default_mem_fraction_static, sglang_budget, sglang_cell_size
from gpuplan.engines.sglang_releases import sglang_release
from gpuplan.engines.tp import (
    _shard_tensor,
    kv_heads_per_rank,
    parallel_layout,
    pp_layer_split,
    stage_spec,
    valid_tp_sizes,
    validate_parallel,
    weights_per_gpu,
)
from gpuplan.engines.vllm import GiB, default_batch_limits, kv_page_size, vllm_budget
from gpuplan.engines.vllm_releases import flashinfer_supports, is_cuda_platform, parse_release, vllm_release
from gpuplan.engines.weight_blocks import weight_blocks
from gpuplan.errors import InputError
from gpuplan.gpus.catalog import load_catalog as load_gpu_catalog
from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import resolve_model

FIXTURE = Path(__file__).parent / "fixtures" / "serving_logs.yaml"
TOLERANCE = 0.05
TARGET_SHARE = 0.90

# ---- replay inputs that the fixture does not carry -------------------------------------------------

# Bundled config to use for a log's model name. Instruction-tuned and base releases of one model share
# the architecture fields that size memory (layers, heads, head_dim, vocabulary, sliding windows). A
# compressed-tensors FP8-dynamic checkpoint (RedHatAI ...-fp8-dynamic) is its BF16 model with the decoder
# layers' linear weights stored as FP8, one scale per output channel, and the embedding and lm_head left in
# BF16: the BF16 config quantized to FP8 on load (the case's quantization "fp8") has the same layout. A
# compressed-tensors W8A8 INT8 checkpoint (RedHatAI ...-quantized.w8a8) stores the same layers as INT8 with one
# scale per output channel: one byte per weight plus a per-row scale, as the BF16 config quantized to int8.
CONFIG_FOR = {
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama2-7B": "meta-llama/Llama-2-7b-hf",
    "Llama2-70B": "meta-llama/Llama-2-70b-hf",
    "Qwen3-235B-A22B-FP8": "Qwen/Qwen3-235B-A22B-FP8",
    "openai/gpt-oss-20b": "openai/gpt-oss-20b",
    "google/gemma-2-9b-it": "google/gemma-2-9b",
    "google/gemma-2-27b-it": "google/gemma-2-27b",
    "google/gemma-3-27b-it": "google/gemma-3-27b-it",
    "Qwen/Qwen1.5-MoE-A2.7B": "Qwen/Qwen1.5-MoE-A2.7B-Chat",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
    "codellama/CodeLlama-7b-hf": "codellama/CodeLlama-7b-hf",
    "google/gemma-2-2b-it": "google/gemma-2-2b-it",
    "google/gemma-3-4b-it": "google/gemma-3-4b-it",
    "Qwen/Qwen3-14B": "Qwen/Qwen3-14B",
    "RedHatAI/Qwen2.5-7B-Instruct-fp8-dynamic": "Qwen/Qwen2.5-7B-Instruct",
    "RedHatAI/Llama-3.3-70B-Instruct-fp8-dynamic": "meta-llama/Llama-3.3-70B-Instruct",
    "RedHatAI/Qwen2.5-7B-Instruct-quantized.w8a8": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen3-8B": "Qwen/Qwen3-8B",
    "Qwen/Qwen3-32B": "Qwen/Qwen3-32B",
    "Qwen/Qwen2.5-3B-Instruct": "Qwen/Qwen2.5-3B-Instruct",
    "meta-llama/Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    # QwQ-32B is a fine-tune of Qwen2.5-32B: same architecture and shapes (fixture notes).
    "Qwen/QwQ-32B": "Qwen/Qwen2.5-32B",
    # Instruct and base releases of Qwen2.5-0.5B share every size (tied embeddings in both).
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen3.5-35B-A3B": "Qwen/Qwen3.5-35B-A3B",
    "Qwen/Qwen2-7B-Instruct": "Qwen/Qwen2-7B-Instruct",
    "facebook/opt-125m": "facebook/opt-125m",
    "meta-llama/Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B",
    # The chat fine-tune of Llama-2-13b-hf keeps every size of the base config (fixture notes).
    "meta-llama/Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
}

# Cases left out, and why. "No verbatim copy found": the model's config.json was searched for in public code
# and packages and not found, and configs are never rewritten from memory.
NOT_REPLAYED = {
    "vllm-llama32-11b-vision-h100-tp1-01": (
        "config not bundled (Llama-3.2-11B-Vision: no verbatim copy found); its 36.63 GiB activation peak is "
        "multimodal encoder profiling, which is not modelled"),
    "vllm-qwen15-7b-gptq-rtx3090-tp1-01": "config not bundled (Qwen1.5-7B-Chat-GPTQ-Int4: no verbatim copy found)",
    "vllm-r1-distill-qwen-14b-rtx4090-tp2-01": (
        "config not bundled (DeepSeek-R1-Distill-Qwen-14B: no verbatim copy found)"),
    "vllm-qwen25-vl-72b-a100-40-4gpu-01": "config not bundled (Qwen2.5-VL-72B); parallel layout not stated",
    "vllm-deepseek-coder-67b-t4-tp2-01": (
        "config not bundled (deepseek-coder-6.7b-instruct: no verbatim copy found)"),
    "vllm-bonito-v1-a10g-tp1-01": "config not bundled (bonito-v1); vLLM version and utilization not stated",
    "vllm-gemma4-26b-a4b-a100-tp1-01": (
        "config not bundled: a verbatim copy ships in the aiconfigurator-core 0.12.0 wheel, but gpuplan has no "
        "gemma4 parser (a dense MLP beside a 128-expert MoE block, 512-wide global heads with K = V)"),
    "vllm-minimax-m2-mi300x-tp2-01": "config not bundled (MiniMax-M2); utilization and context not stated",
    "vllm-gemma3-12b-h100-tp1-01": (
        "config not bundled (gemma-3-12b-it: no verbatim copy found with a citable repository; only Gemma-3 "
        "1B, 4B and 27B are bundled)"),
    "vllm-qwen25-05b-rtx4060laptop-tp1-v085": (
        "GPU not in the catalog (RTX 4060 Laptop GPU, 8188 MiB by nvidia-smi), so no total to replay with"),
}

# Total memory as CUDA reports it (torch.cuda.mem_get_info), for logs that do not print it. It is below
# nvidia-smi's total by a few hundred MiB.
CUDA_TOTAL_GIB = {
    # vLLM 0.19.0 on H100-80GB: total_memory=79.19GiB (llm-d-incubation/llm-d-planner
    # accuracy/results/v0.19.0/logs @ d3121e0, llama-3-1-8b ... 16384.log; "Requested memory: 0.95 ...
    # 75.23 GiB" in every log of that run).
    "H100": 79.19,
    # "GPU Type: A100 - 80GB ... GPU 3 has a total capacity of 79.15 GiB"
    # (https://github.com/vllm-project/vllm/issues/8903).
    "A100-80GB": 79.15,
}
GPU_TOTAL_KEY = {"H100": "H100", "H100-80GB": "H100", "H100-80G": "H100", "A100-80GB": "A100-80GB",
                 # The gpt-oss post names only "Nvidia A100": its 13.72 GiB of weights plus 36.56 GiB of KV
                 # exceed 0.65 x 40 GB, so it is the 80 GB part.
                 "Nvidia A100": "A100-80GB"}

# Cases the model does not reproduce within tolerance, with the reason (docs/serving.md discusses them).
KNOWN_MISSES = {
    "vllm-llama2-70b-a100-80-tp4-01": (
        "Dec-2023 vLLM on A100 (vllm PR #2031, the fix that started counting communication memory): the "
        "non-torch memory it charged at TP=4 was about 13 GiB per GPU, against the 2.06-2.21 GiB that vLLM 0.19 "
        "prints on H100"),
    "vllm-qwen3-235b-a22b-fp8-h100-tp4-01": (
        "TP=4 with an LMCache connector on a mid-2025 vLLM: about 1.5 GiB per GPU of non-KV memory beyond "
        "the modelled communication buffers"),
    "sglang-qwen3-235b-a22b-fp8-h100-tp4-01": (
        "TP=4: about 1.6 GiB per GPU more in use after loading than the weights' bytes, of which the segments "
        "the load reserves are 0.64 GiB (+9.6% before they were counted, +5.7% now); SGLang's communication "
        "buffers are not modelled"),
    "sglang-qwq-32b-l4-tp4-v043": (
        "TP=4 on four PCIe L4s: the log prints 21.63 GB free before loading and 15.54 GB used by loading, "
        "against 21.98 and 15.51 modelled (no CUDA total is known for the L4, so the catalog's nvidia-smi "
        "total is used; the load's reserved segments account for 0.25 of the 0.28 GB beyond the weight "
        "shards: +20.5% before they were counted, +11.7% now)"),
    "vllm-llama3-8b-a100-40-tp1-v066": (
        "the log prints a 9.37 GiB activation peak, against 1.05 modelled for V0's 8192-token, 256-sequence profile "
        "run (its replayed allocated peak; 0.92 with the generic formula as first replayed); the same model and "
        "rule on an H100 printed 1.26 (vllm-llama3-8b-h100-tp1-pr10511, within 5%). The command line is not "
        "quoted, so a larger --max-num-batched-tokens or another flag cannot be ruled out"),
    "vllm-llama32-1b-gtx1080-tp1-v064post1": (
        "vLLM 0.6.4.post1 on a GeForce GTX 1080 (Pascal, which vLLM does not support: XFormers, and the engine "
        "failed at its first request): the log prints 3.49 GiB of peak torch memory and 0.44 GiB of non-torch "
        "memory (the desktop's processes included) against 3.18 and 0.35 modelled, 0.40 GiB on a 3.60 GiB pool; "
        "the generic activation formula that 0.6.4 keeps is 0.31 GiB under its profile run"),
    "vllm-llama2-13b-chat-80gb-tp1-v027": (
        "vLLM 0.2.7 with LLM defaults on an unnamed 80 GB GPU: it charged 29.51 GiB beside the 41.72 GiB pool (0.9 x "
        "79.15 - 41.72) against 25.03 modelled (24.24 of weights, 0.43 activation peak, 0.35 non-torch). The 4.48 "
        "GiB is not traced: the log prints only the blocks, and this release's rule (total - free after profiling) "
        "also charges any other process on the device; the Llama2-7B A100 case under the same rule is within 1.0%"),
}


def _siglip_tower_parameters(vision: dict, text_hidden: int) -> int:
    """Parameters of a Gemma-3 vision tower and projector, from the checkpoint's vision_config.

    transformers/models/siglip/modeling_siglip.py: SiglipVisionEmbeddings (Conv2d patch embedding with bias,
    a position embedding per patch), per SiglipEncoderLayer two LayerNorms, q/k/v/out projections with bias
    and fc1/fc2 with bias, a final post_layernorm; gemma3 Gemma3MultiModalProjector: an input projection
    [vision_hidden, text_hidden] and an RMSNorm over vision_hidden. vLLM loads them with the text model.
    """
    h, i = vision["hidden_size"], vision["intermediate_size"]
    patch, image = vision["patch_size"], vision["image_size"]
    embeddings = 3 * patch * patch * h + h + (image // patch) ** 2 * h
    layer = 2 * (2 * h) + 4 * (h * h + h) + (h * i + i) + (i * h + h)
    return embeddings + vision["num_hidden_layers"] * layer + 2 * h + h * text_hidden + h


@cache
def _spec(config_id: str):
    spec = resolve_model(config_id).spec
    if spec.vision_parameters == 0:
        entry = load_catalog().get(config_id)
        raw = json.loads(entry.path.read_text()) if entry is not None else {}
        vision = raw.get("vision_config")
        if vision and vision.get("model_type") == "siglip_vision_model":
            spec = spec.model_copy(update={"vision_parameters": _siglip_tower_parameters(
                vision, spec.hidden_size)})
    return spec


def _load_cases() -> list[dict]:
    return yaml.safe_load(FIXTURE.read_text())


@dataclass(frozen=True)
class Replay:
    id: str
    engine: str
    model: str
    config: str
    gpu: str
    tp: int
    pp: int
    metric: str
    logged: float
    predicted: float
    budget: object
    release: str
    era: str
    held_out: bool

    @property
    def error(self) -> float:
        return (self.predicted - self.logged) / self.logged

    @property
    def within(self) -> bool:
        return abs(self.error) <= TOLERANCE

    @property
    def single_gpu(self) -> bool:
        return self.tp == 1 and self.pp == 1



def test_a6000_replay_moves_with_the_ecc_state():
    # vllm#4454 prints no GPU total. Replayed with the ECC-off RTX A6000 the catalog now takes by default (CUDA total
    # 47.54 GiB, data/gpus.yaml): +3.0% (13,646 blocks) when the activation charge was the allocated peak, +1.7%
    # since 0.3.1-0.6.3 charge the profile run's reserved peak (gpuplan.engines.vllm_v0_reserved). As first
    # replayed, with the ECC-on card's driver total (46068 MiB): -5.9% (12,470); with the ECC-on card's CUDA total
    # (44.55 GiB, "RTX A6000 ECC"): -7.4% (12,268); -7.2% and -8.7% with the reserved peak. The logged 13,248
    # blocks (25.88 GiB) and 14.96 GiB of weights alone need (25.88 + 14.96) / 0.9 = 45.4 GiB, more than the
    # ECC-on card has.
    case = next(c for c in replayable_cases() if c["id"] == "vllm-llama3-8b-a6000-tp1-pr4454")
    ecc_on_driver_total = {**case, "observed": {**case["observed"], "total_gpu_memory_gib": 46068 / 1024}}
    replayed = {
        "ECC off (default)": replay(case),
        "ECC on, CUDA total": replay({**case, "gpu": "RTX A6000 ECC"}),
        "ECC on, driver total": replay(ecc_on_driver_total),
    }
    assert {state: r.predicted for state, r in replayed.items()} == {
        "ECC off (default)": 13_470, "ECC on, CUDA total": 12_092, "ECC on, driver total": 12_294}
    assert [state for state, r in replayed.items() if r.within] == ["ECC off (default)"]
    assert (25.88 + 14.96) / 0.9 > load_gpu_catalog().resolve("RTX A6000 ECC").cuda_total_bytes / GiB

# GPUs of replayed logs that the catalog does not list (each log prints its CUDA total), by architecture: the
# GeForce GTX 1080 is Pascal (GP104, compute capability 6.1), on which vLLM 0.6.4 picks XFormers.
ARCHITECTURE_OUTSIDE_CATALOG = {"GTX 1080": "Pascal"}


def _architecture(gpu: str) -> str:
    return ARCHITECTURE_OUTSIDE_CATALOG.get(gpu) or load_gpu_catalog().resolve(gpu).architecture


def _gpu_total_bytes(case: dict, util: float) -> int:
    obs = case["observed"]
    if obs.get("total_gpu_memory_gib"):
        return int(obs["total_gpu_memory_gib"] * GiB)
    if obs.get("requested_memory_gib"):
        return int(obs["requested_memory_gib"] / util * GiB)
    if case["gpu"] in GPU_TOTAL_KEY:
        return int(CUDA_TOTAL_GIB[GPU_TOTAL_KEY[case["gpu"]]] * GiB)
    # What `gpuplan estimate --gpu NAME` itself uses: the catalog's CUDA-reported total where it has one, else its
    # driver (nvidia-smi) total, a few hundred MiB above what CUDA reports.
    return load_gpu_catalog().resolve(case["gpu"]).usable_bytes


def _dtype(case: dict, spec) -> str:
    quant = case.get("quantization")
    if quant and spec.quantization is None:
        return quant  # quantize on load (--quantization fp8 on a bf16 checkpoint)
    return {None: "auto", "auto": "auto", "float16": "fp16", "bfloat16": "bf16",
            "float32": "fp32"}[case.get("dtype")]


def _inputs(case: dict) -> dict:
    """Engine inputs for a case: what the log states, else the default of the case's release."""
    spec = _spec(CONFIG_FOR[case["model"]])
    release = vllm_release(case["engine_version"]) if case["engine"] == "vllm" else None
    util = case.get("gpu_memory_utilization") or (release.gpu_memory_utilization if release else 0.9)
    precision = resolve_precision(spec, _dtype(case, spec), case.get("kv_cache_dtype") or "auto")
    return {
        "spec": spec,
        "precision": precision,
        "gpu_memory_bytes": _gpu_total_bytes(case, util),
        "tp": case.get("tensor_parallel_size") or 1,  # single-GPU logs: TP=1 (fixture notes)
        "pp": case.get("pipeline_parallel_size") or 1,
        "util": util,
        "max_model_len": case.get("max_model_len"),  # None: the model's own context length
        "max_num_seqs": case.get("max_num_seqs"),
        "max_num_batched_tokens": case.get("max_num_batched_tokens"),
        "block_size": case.get("block_size"),  # None: the release's default
        "engine": "v0" if case.get("v1") is False else "v1",
        "engine_version": case["engine_version"],
        "usage_context": case.get("usage_context") or "openai",  # vllm serve unless the case says LLM class
        # What the log prints about the top-k/top-p sampler, else the release's default on that GPU.
        "flashinfer_sampler": case.get("flashinfer_sampler"),
        "flashinfer_supported": release is not None and flashinfer_supports(
            release, _architecture(case["gpu"])),
        # No CUDA graphs (0.20+ charge no graph estimate); AMD GPUs run on ROCm (0.20-0.33 estimate nothing).
        "enforce_eager": bool(case.get("enforce_eager")),
        "cuda_platform": is_cuda_platform(_architecture(case["gpu"])),
    }


def replay(case: dict) -> Replay:
    inp = _inputs(case)
    obs = case["observed"]
    if case["engine"] == "sglang":
        b = sglang_budget(inp["spec"], inp["precision"], inp["gpu_memory_bytes"], tp=inp["tp"], pp=inp["pp"],
                          mem_fraction_static=case.get("mem_fraction_static"), engine_version=case["engine_version"])
        metric, logged, predicted = "tokens", obs["kv_cache_tokens"], b.max_total_num_tokens
    else:
        b = vllm_budget(inp["spec"], inp["precision"], inp["gpu_memory_bytes"], tp=inp["tp"], pp=inp["pp"],
                        gpu_memory_utilization=inp["util"], max_model_len=inp["max_model_len"],
                        max_num_seqs=inp["max_num_seqs"],
                        max_num_batched_tokens=inp["max_num_batched_tokens"],
                        block_size=inp["block_size"], engine=inp["engine"], gpu_name=case["gpu"],
                        engine_version=inp["engine_version"], usage_context=inp["usage_context"],
                        flashinfer_sampler=inp["flashinfer_sampler"],
                        flashinfer_supported=inp["flashinfer_supported"], enforce_eager=inp["enforce_eager"],
                        cuda_platform=inp["cuda_platform"])
        if obs.get("kv_cache_tokens"):
            metric, logged, predicted = "tokens", obs["kv_cache_tokens"], b.kv_cache_tokens
        elif obs.get("gpu_blocks"):
            metric, logged, predicted = "blocks", obs["gpu_blocks"], b.num_blocks
        elif obs.get("available_kv_gib"):
            metric, logged, predicted = "KV GiB", obs["available_kv_gib"], b.available_kv / GiB
        else:
            metric, logged, predicted = DERIVED_KV, derived_kv_gib(case), b.available_kv / GiB
    return Replay(id=case["id"], engine=case["engine"], model=case["model"], config=CONFIG_FOR[case["model"]],
                  gpu=f'{case["gpu"]} x{case["gpu_count"]}', tp=inp["tp"], pp=inp["pp"], metric=metric,
                  logged=logged, predicted=predicted, budget=b, release=case["engine_version"],
                  era=release_era(case), held_out=bool(case.get("held_out")))


# The eras docs/serving.md reports on: the releases whose budget rule differs (gpuplan.engines.vllm_releases,
# gpuplan.engines.sglang_releases), V0 and V1 apart where both ship.
VLLM_ERAS = [((0, 2, 5), "vLLM 0.2.5-0.3.0"), ((0, 3, 1), "vLLM 0.3.1-0.6.3"), ((0, 6, 4), "vLLM 0.6.4"),
             ((0, 6, 5), "vLLM 0.6.5-0.10.2 (V0)"), ((0, 11, 0), "vLLM 0.11-0.19"),
             ((0, 20, 0), "vLLM 0.20-0.33"), ((0, 34, 0), "vLLM 0.34")]
VLLM_V1_ERAS = [((0, 7, 0), "vLLM 0.7.0-0.9.0 (V1)"), ((0, 9, 1), "vLLM 0.9.1-0.10.2 (V1)"),
                ((0, 11, 0), "vLLM 0.11-0.19")]


def release_era(case: dict) -> str:
    if case["engine"] == "sglang":
        return f"SGLang {sglang_release(case['engine_version']).era}"
    version = parse_release(case["engine_version"])
    v1 = case.get("v1") is not False
    table = VLLM_V1_ERAS if v1 and (0, 7, 0) <= version < (0, 11, 0) else VLLM_ERAS
    return next(name for first, name in reversed(table) if first <= version)


# Report tables that print a run's weights, activation peak and non-torch memory but not its KV pool: vLLM's
# pool is requested memory minus their sum (gpu_worker.py determine_available_memory; every 0.19.0 log prints
# "Total non KV cache memory" as that sum). Derived from printed values, each rounded to 0.01 GiB.
DERIVED_KV = "KV GiB (derived)"


def derived_kv_gib(case: dict) -> float:
    obs = case["observed"]
    return obs["requested_memory_gib"] - (obs["weights_gib"] + obs["activation_peak_gib"] + obs["non_torch_gib"])


def replayable_cases() -> list[dict]:
    return [c for c in _load_cases() if c["id"] not in NOT_REPLAYED]


def replay_all() -> list[Replay]:
    return [replay(c) for c in replayable_cases()]


def format_table(results: list[Replay]) -> str:
    def fmt(metric: str, x: float) -> str:
        return f"{x:.2f}" if metric.startswith("KV GiB") else f"{round(x):,}"

    lines = ["| case | release | GPU | TP | PP | compared | logged | predicted | error | within 5% |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| `{r.id}` | {r.engine} {r.release} | {r.gpu} | {r.tp} | {r.pp} | {r.metric} | "
                     f"{fmt(r.metric, r.logged)} | {fmt(r.metric, r.predicted)} | {r.error:+.1%} | "
                     f"{'yes' if r.within else 'no'} |")
    single = [r for r in results if r.single_gpu]
    multi = [r for r in results if not r.single_gpu]
    lines += ["", f"Within 5%: {sum(r.within for r in results)} of {len(results)} replayed cases; "
                  f"{sum(r.within for r in single)} of {len(single)} single-GPU cases, "
                  f"{sum(r.within for r in multi)} of {len(multi)} multi-GPU cases (TP or PP). "
                  f"Not replayed: {len(NOT_REPLAYED)} (listed below)."]
    return "\n".join(lines)


def logged_components(case: dict) -> dict[str, float]:
    """Weights and activation peak (GiB) as the log prints them; V0 logs of late 2024 print the torch
    peak including the weights."""
    obs = case["observed"]
    weights = obs.get("weights_gib") or obs.get("weights_gb")
    activation = obs.get("activation_peak_gib")
    if activation is None and obs.get("peak_torch_gib") and weights:
        activation = obs["peak_torch_gib"] - weights
    return {k: v for k, v in (("weights", weights), ("activation", activation)) if v is not None}


# Weights the layout does not reproduce, and why:
WEIGHTS_NOT_MODELLED = {
    # vLLM loads gpt-oss-20b's MXFP4 experts into 13.72 GiB on an A100 (0.9 GiB over the checkpoint layout's
    # 12.83 GiB), 13.64 GiB on an H100 (0.81 over) and 7.01 GiB per GPU at TP=2 on H100s (0.58 over 6.43); the
    # kernel-side layout is not modelled.
    "vllm-gpt-oss-20b-a100-tp1-01", "vllm-gpt-oss-20b-h100-tp1-01", "vllm-gpt-oss-20b-h100-tp2-01",
    "vllm-gpt-oss-20b-h100-tp2-gmu095",
    # Gemma-3 builds two rotary caches, a local one and a global one whose linear scaling makes vLLM size it
    # max_position_embeddings x factor (131072 x 8) rows (vLLM 0.19.0 rotary_embedding/linear_scaling_rope.py
    # _compute_cos_sin_cache, `max_len = self.max_position_embeddings * scaling_factor`): 0.5 GiB more than the
    # single unscaled cache gpuplan counts for gemma-3-4b (head_dim 256); the spec carries no rope scaling.
    "vllm-gemma3-4b-h100-tp1-01", "vllm-gemma3-4b-b200-tp1-kvmem",
    # Qwen3.5-35B-A3B at TP=4: 16.92 GiB per GPU logged against 16.31 from the checkpoint layout (0.61 GiB more);
    # not traced: the excerpt shows neither whether a DFlash drafter was loaded nor how the vision tower is split.
    "vllm-qwen35-35b-a3b-h100-tp4-issue50722",
}

# Activation peaks the model does not reproduce: before 0.17 vLLM's dummy sampler sorted the vocabulary, and the
# logged 5.64 GiB for Qwen3-14B (1024 sequences x 151,936 entries) is about 38 bytes per entry against the 28
# that the modelled sort path keeps alive; the difference is not traced.
ACTIVATION_NOT_MODELLED = {"vllm-qwen3-14b-h100-tp1-v0150", "vllm-qwen3-14b-h100-tp1-v0160",
                           # Gemma-3-4B-it at 16,384 batched tokens: 9.96 GiB logged, 7.09 predicted; the profile
                           # run also encodes dummy images for the SigLIP tower (multimodal encoder profiling),
                           # which is not modelled.
                           "vllm-gemma3-4b-b200-tp1-kvmem",
                           # Meta-Llama-3-8B on an A100-40GB under 0.6.6 (V0): 9.37 GiB logged, 0.92 predicted;
                           # the same model and rule printed 1.26 on an H100 (vllm-llama3-8b-h100-tp1-pr10511). The
                           # command line is not quoted, so the batch limits of that run are unknown.
                           "vllm-llama3-8b-a100-40-tp1-v066",
                           # Qwen3.5-35B-A3B at TP=4 (hybrid, Gated DeltaNet): 5.66 GiB logged, 3.35 predicted; the
                           # command line (batch limits, a DFlash drafter, multimodal profiling) is not quoted.
                           "vllm-qwen35-35b-a3b-h100-tp4-issue50722"}

# Pipeline-parallel report rows print the first stage, which runs the forward pass alone (1.10, 1.05 and 0.96
# GiB); gpuplan reports the stage that limits the pool, the last, whose dummy sampler pass over the vocabulary
# sets its peak. The two figures are not the same stage's, so the activation is not compared.
FIRST_STAGE_ONLY = {"vllm-llama31-8b-h100-pp2-01", "vllm-llama31-8b-h100-pp4-01", "vllm-qwen3-8b-h100-pp3-01"}


def format_components(results: list[Replay]) -> str:
    cases = {c["id"]: c for c in _load_cases()}
    lines = ["| case | weights logged | weights predicted | activation logged | activation predicted |",
             "|---|---|---|---|---|"]
    for r in results:
        logged = logged_components(cases[r.id])
        if r.engine != "vllm" or not logged:
            continue
        b = r.budget
        w, a = logged.get("weights"), logged.get("activation")
        shown = {k: "not printed" if v is None else f"{v:.2f}" for k, v in (("w", w), ("a", a))}
        lines.append(f"| `{r.id}` | {shown['w']} | {b.weights / GiB:.2f} | {shown['a']} | "
                     f"{b.activation_peak / GiB:.2f} |")
    return "\n".join(lines)


# ---- the replay -------------------------------------------------------------------------------------


def test_components_match_the_logged_breakdown():
    cases = {c["id"]: c for c in _load_cases()}
    for r in replay_all():
        logged = logged_components(cases[r.id])
        if r.engine != "vllm":
            continue
        if "weights" in logged and r.id not in WEIGHTS_NOT_MODELLED:
            assert abs(r.budget.weights / GiB - logged["weights"]) <= 0.01 * logged["weights"], r.id
        if "activation" in logged and r.id not in ACTIVATION_NOT_MODELLED | FIRST_STAGE_ONLY:
            assert abs(r.budget.activation_peak / GiB - logged["activation"]) <= 0.45, r.id


def test_fixture_cases_are_all_accounted_for():
    ids = {c["id"] for c in _load_cases()}
    assert set(NOT_REPLAYED) <= ids
    assert set(KNOWN_MISSES) <= ids - set(NOT_REPLAYED)
    for case in replayable_cases():
        assert case["model"] in CONFIG_FOR, case["id"]


@pytest.mark.parametrize("case", replayable_cases(), ids=lambda c: c["id"])
def test_replay_case_within_tolerance(case):
    if case["id"] in KNOWN_MISSES:
        pytest.xfail(KNOWN_MISSES[case["id"]])
    r = replay(case)
    assert r.within, f"{r.metric}: logged {r.logged}, predicted {r.predicted} ({r.error:+.1%})"


def test_known_misses_still_miss():
    # If one of these starts to match, the reason recorded for it is wrong: revisit it.
    for case in replayable_cases():
        if case["id"] in KNOWN_MISSES:
            assert not replay(case).within, case["id"]


def test_sampler_follows_the_vllm_release():
    # From 0.17.0 vLLM masks top-k/top-p in place with a Triton kernel for batches of 8 or more
    # (vllm/v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p in the 0.17.0 wheel, PR #33538; the 0.16.0
    # wheel has no topk_topp_triton.py); earlier releases sorted the vocabulary.
    assert vllm_release("0.16.0").sampler == "sort"
    assert vllm_release("0.17.0").sampler == "in_place"


def test_replay_takes_the_sampler_the_log_prints():
    # Cases whose log prints "Using FlashInfer for top-p & top-k sampling" record it (flashinfer_sampler: true);
    # the replay samples with FlashInfer there and with the release's default elsewhere.
    printed = [c for c in replayable_cases() if "Using FlashInfer for top-p & top-k sampling" in c["excerpt"]]
    assert [c["id"] for c in printed] == ["vllm-qwen2-7b-a100-80-tp1-v01011-gmu025",
                                          "vllm-qwen2-7b-a100-80-tp1-v01011-gmu050"]
    assert all(c.get("flashinfer_sampler") is True for c in printed)
    assert [c["id"] for c in replayable_cases() if "flashinfer_sampler" in c] == [c["id"] for c in printed]
    # With the weights counted in the allocator's blocks (weight_blocks; 57 MiB more for Qwen2-7B): -5.0%
    # with, -15.1% without, and -1.1%, -3.1%. Before that: -3.9% and -14.0%, -0.9% and -2.9%.
    expected = {"vllm-qwen2-7b-a100-80-tp1-v01011-gmu025": (89_200, 79_696),
                "vllm-qwen2-7b-a100-80-tp1-v01011-gmu050": (459_712, 450_208)}
    for case in printed:
        with_it, as_first_replayed = replay(case), replay({k: v for k, v in case.items() if k != "flashinfer_sampler"})
        assert (with_it.budget.sampler, as_first_replayed.budget.sampler) == ("flashinfer", "sort")
        assert (with_it.predicted, as_first_replayed.predicted) == expected[case["id"]]


def test_aggregate_share_within_tolerance():
    results = replay_all()
    single = [r for r in results if r.single_gpu]
    multi = [r for r in results if not r.single_gpu]
    assert len(results) == 71 and len(single) == 54 and len(multi) == 17
    # The cases the release rules were written against (not held out): 45 of 48 (94%); 34 of 34 single-GPU. Three of
    # the 14 multi-GPU cases among them miss: vLLM 0.2.5 at TP=4, an LMCache connector, SGLang at TP=4
    # (docs/serving.md).
    development = [r for r in results if not r.held_out]
    assert sum(r.within for r in development) / len(development) >= TARGET_SHARE
    assert all(r.within for r in development if r.single_gpu)
    # All replayed cases at their own release: 59 of 65 (91%); single-GPU 46 of 48 (the two misses are both held
    # out, KNOWN_MISSES), multi-GPU 13 of 17. Before the weights were counted in the caching allocator's blocks
    # (weight_blocks; the RTX 4090 Qwen2.5-7B log from +5.2% to +4.0%): 58 of 65 (89%) and 45 of 48; the same
    # before 0.6.5-0.10.2 (V0) were charged the replayed allocated peak. Before the sixth held-out collection (the
    # vLLM 0.2.7 Llama-2-13b-chat log, a miss): 58 of 64 (91%) and 45 of 47. Before 0.3.1-0.6.3 were charged the
    # profile run's reserved peak: 57 and 44 (89%, under the 90% goal since the second held-out collection). Before
    # the fourth collection's Qwen2-7B logs were replayed with the FlashInfer sampler they print: 55 and 42; before
    # the catalog's RTX A6000 became the ECC-off card: 56 and 43.
    # The seventh held-out collection (five single-GPU logs, four within 5%): 63 of 70 (90%), 50 of 53.
    # The eighth (one single-GPU SGLang 0.5.19 log, within 5%): 64 of 71 (90.1%), 51 of 54.
    assert sum(r.within for r in results) == 64
    assert sum(r.within for r in single) == 51
    assert sum(r.within for r in multi) == 13


def test_held_out_cases_are_reported_apart():
    results = replay_all()
    held = [r for r in results if r.held_out]
    assert [r.id for r in held] == ["vllm-gemma3-4b-b200-tp1-kvmem", "vllm-qwen25-3b-t4-tp1-v066",
                                    "vllm-llama3-8b-h100-tp1-pr10511", "vllm-llama3-8b-h100-tp2-pr10511",
                                    "sglang-qwq-32b-l4-tp4-v043", "sglang-llama31-8b-h100-tp1-fa3",
                                    "vllm-qwen25-7b-rtx4090-tp1-v0240", "vllm-qwen25-05b-rtx4090-tp1-v0240",
                                    "vllm-qwen25-05b-rtx4090d-tp1-v085", "vllm-llama3-8b-a100-40-tp1-v066",
                                    "vllm-llama3-8b-a6000-tp1-pr4454", "vllm-qwen35-35b-a3b-h100-tp4-issue50722",
                                    "vllm-llama3-8b-rtx3090-tp1-v041", "vllm-qwen2-7b-a100-80-tp1-v01011-gmu025",
                                    "vllm-qwen2-7b-a100-80-tp1-v01011-gmu050", "vllm-opt125m-a100-80-tp1-v040",
                                    "vllm-llama2-13b-chat-80gb-tp1-v027", "vllm-llama32-1b-gtx1080-tp1-v064post1",
                                    "vllm-opt125m-gtx1080-tp1-v064post1-a", "vllm-opt125m-gtx1080-tp1-v064post1-b",
                                    "vllm-qwen25-15b-a10-tp1-v085post1", "vllm-opt125m-a10-tp1-v085post1",
                                    "sglang-qwen3-32b-h100-tp1-v0519"]
    # First collection: 5 of 6 within 5%. Second (releases no earlier log covered): 2 of 5. Each miss is a known
    # one (KNOWN_MISSES), replayed once before being recorded there. Third (a hybrid linear-attention model):
    # 1 of 1, +4.3% on the KV pool, but through offsetting parts: the log prints 0.13 GiB of non-torch memory
    # at TP=4 against 2.08 modelled, and 5.66 GiB of activations and 1.34 of CUDA graphs against 3.35 and 0.44.
    # Fourth (eras with fewer than three logs): 1 of 3 as first replayed, the same with and without the RTX 4090
    # CUDA total; 2 of 3 once the Qwen2-7B logs are replayed with the FlashInfer sampler they print (utilization
    # 0.25: -14.0% to -3.9%; 0.5: -2.9% to -0.9%).
    # Fifth (eras with fewer than three logs, a newly bundled config): 1 of 1, opt-125m under 0.4.0.post1 at +0.2%.
    # The A6000 run of the fourth-collection era (vllm#4454) missed at -5.9% (-7.4% with the ECC-on card's CUDA
    # total); with the ECC-off card the catalog's RTX A6000 now describes it is +3.0%
    # (test_a6000_replay_moves_with_the_ecc_state).
    # Since vLLM 0.3.1-0.6.3 are charged the profile run's reserved peak rather than its allocated peak
    # (gpuplan.engines.vllm_v0_reserved), the three held-out logs of that era move: the RTX 3090 (vLLM 0.4.1) from
    # +10.5% to +3.0%, the A6000 from +3.0% to +1.7%, opt-125m from +0.2% to +0.05%
    # (test_reserved_peak_moves_the_era_logs).
    # Sixth (eras with fewer than three logs): 0 of 1, vLLM 0.2.7 Llama-2-13b-chat with LLM defaults at +10.7%
    # (3,785 blocks predicted, 3,418 logged).
    # Since vLLM 0.6.5-0.10.2 (V0) are charged the profile run's replayed allocated peak rather than the generic
    # formula, that era's four held-out logs move, the same ones within 5% (test_allocated_peak_moves_the_era_logs).
    # Since the weights are counted in the caching allocator's blocks (weight_blocks), the fourth collection's
    # RTX 4090 Qwen2.5-7B log moves from +5.2% (a miss) to +4.0% (test_weight_blocks_move_the_logs).
    # Seventh (eras with fewer than three logs), as first replayed: 4 of 5, vLLM 0.6.4.post1 on a GTX 1080 (Llama-3.2-1B
    # +11.1%, opt-125m -1.2% and +3.5%, one configuration under two amounts of other processes' memory) and 0.8.5.post1
    # V1 on an A10 (Qwen2.5-1.5B-Instruct +3.4%, opt-125m +0.9%).
    # Eighth (the SGLang 0.5.3-and-later era), as first replayed: 1 of 1, 0.5.19 Qwen3-32B on an H100 at +2.1%.
    assert [r.id for r in held if not r.within] == [
        "sglang-qwq-32b-l4-tp4-v043", "vllm-llama3-8b-a100-40-tp1-v066", "vllm-llama2-13b-chat-80gb-tp1-v027",
        "vllm-llama32-1b-gtx1080-tp1-v064post1"]


def test_reserved_peak_moves_the_era_logs():
    # Block counts as first replayed (the allocated peak charged) and now (the reserved peak charged).
    era = {r.id: r for r in replay_all() if r.era == "vLLM 0.3.1-0.6.3"}
    assert {i: r.predicted for i, r in era.items()} == {
        "vllm-llama3-8b-a6000-tp1-pr4454": 13_470,  # 13,646 as first replayed; 13,248 logged
        "vllm-llama3-8b-rtx3090-tp1-v041": 2_429,  # 2,606; 2,358 logged
        "vllm-opt125m-a100-80-tp1-v040": 128_039}  # 128,181; 127,981 logged (128,049 before its weights' blocks)
    for r in era.values():
        assert r.budget.activation_peak > max(r.budget.activation_forward, r.budget.activation_sampler)
        assert 0 < r.error < TOLERANCE


def test_allocated_peak_moves_the_era_logs():
    # Predictions as first replayed (the generic activation formula charged) and now (the replayed allocated peak,
    # utils.py memory_profiling in 0.6.5 and 0.6.6); logged: 10,533 blocks, 53.29 and 58.97 GiB, 5,691 blocks.
    era = {r.id: r for r in replay_all() if r.era == "vLLM 0.6.5-0.10.2 (V0)"}
    assert {i: round(r.predicted, 2) for i, r in era.items()} == {
        "vllm-qwen25-3b-t4-tp1-v066": 10_700,  # 11,043 as first replayed (+4.8%), +2.2% with the replayed peak,
        # +1.6% now (its weights counted in the allocator's blocks: 5.79 GiB, as logged)
        "vllm-llama3-8b-h100-tp1-pr10511": 55.04,  # 55.17 GiB (+3.5%), +3.3% now
        "vllm-llama3-8b-h100-tp2-pr10511": 60.68,  # 60.81 GiB (+3.1%), +2.9% now
        "vllm-llama3-8b-a100-40-tp1-v066": 9_876}  # 9,941 (+74.7%), +73.5% now: still a known miss
    for r in era.values():
        assert r.budget.activation_peak > max(r.budget.activation_forward, r.budget.activation_sampler)
        assert r.error > 0


# Logged weights the allocator's blocks do not explain: Gemma-3's linear-scaled rotary cache (WEIGHTS_NOT_MODELLED
# gives the arithmetic; 0.27 GiB for the 27B), and the vLLM 0.24.0 RTX 4090 log, 14.29 GiB against 14.25 (the
# 14.2488 that 0.10.1.1 printed for the same layout); 0.24.0's loader is not read.
WEIGHTS_BEYOND_BLOCKS = {"vllm-gemma3-27b-h100-tp1-01", "vllm-qwen25-7b-rtx4090-tp1-v0240",
                         # Replayed with the base config, whose 131,072 positions make a rotary cache 24 MiB larger
                         # than the Instruct checkpoint's 32,768 (fixture notes); the blocks beyond it match.
                         "vllm-qwen25-15b-a10-tp1-v085post1"}


def test_weights_are_the_caching_allocators_blocks():
    # vLLM reads its weights as allocated bytes, which count whole blocks: a 31.5 MiB parameter in a fresh
    # 32 MiB segment keeps the 0.5 MiB rest (CUDACachingAllocator should_split: only a rest above 1 MiB is split
    # off). Qwen2.5-7B's layers leave such rests at TP=1 and 2; Llama-3.1-8B's tensors are multiples of 2 MiB.
    qwen, llama = _spec("Qwen/Qwen2.5-7B-Instruct"), _spec("meta-llama/Llama-3.1-8B-Instruct")
    precision = resolve_precision(qwen, "bf16")
    rope = {id(qwen): 32_768 * 128 * 2, id(llama): 131_072 * 128 * 2}  # cos_sin_cache [positions, head_dim] bf16
    extra = {}
    for spec in (qwen, llama):
        for tp in (1, 2, 4):
            blocks = weight_blocks(spec, precision, tp, 1)[0]
            bytes_ = parallel_layout(spec, precision, tp, 1).stage_weights_bytes[0] + rope[id(spec)]
            assert blocks.reserved > blocks.allocated >= bytes_
            extra[(spec.model_type, tp)] = (blocks.allocated - bytes_) / 2**20
    assert extra == {("qwen2", 1): 57.0, ("qwen2", 2): 21.5, ("qwen2", 4): 0.2568359375,
                     ("llama", 1): 0.0, ("llama", 2): 2.0, ("llama", 4): 0.0}
    # Every pipeline stage builds its own layers and rotary cache; the first holds the embedding, the last the head.
    stages = weight_blocks(qwen, precision, 1, 2)
    assert len(stages) == 2 and sum(b.allocated for b in stages) - sum(
        parallel_layout(qwen, precision, 1, 2).stage_weights_bytes) == (
        2 * rope[id(qwen)] + 2**20 * (28 * 2.0 + 1.0))  # 2 MiB a layer, 0.5 MiB each for the embedding and the head


def test_weight_blocks_follow_the_allocator_simulation():
    # After the rotary cache the load frees nothing, and the count follows from block sizes alone; it agrees with
    # the whole load replayed through the allocator simulation (dense, MoE, MLA, tied, learned positions, fused
    # QKV; up to 8 GPUs).
    from gpuplan.calc.allocator import CachingAllocator
    from gpuplan.engines.weight_blocks import _layer_allocations, _layer_groups, _rope_cache, _spread, _stage_copies

    checked = 0
    for model_id in ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen1.5-MoE-A2.7B-Chat", "google/gemma-2-2b-it",
                     "deepseek-ai/DeepSeek-R1", "facebook/opt-125m", "microsoft/Phi-3-mini-4k-instruct",
                     "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"):
        spec = _spec(model_id)
        precision = resolve_precision(spec, "auto")
        for tp in (1, 2, 4, 8):
            try:
                layout = parallel_layout(spec, precision, tp, 1)
            except InputError:
                continue
            a = CachingAllocator()
            for t in spec.tensors:
                if t.loaded and t.role.value in ("embedding", "position_embedding"):
                    a.malloc(tensor_bytes(_shard_tensor(t, spec, tp), precision))
            groups = _layer_groups(spec, precision, tp)
            copies = _stage_copies(spec, 0, spec.num_hidden_layers)
            for layer, counts in enumerate(_spread(copies, spec.num_hidden_layers)):
                attention, rest = _layer_allocations(groups, counts)
                for size in attention:
                    a.malloc(size)
                if layer == 0:
                    _rope_cache(a, spec, precision.compute_bytes)
                for size in rest:
                    a.malloc(size)
            for t in spec.tensors:
                if t.loaded and not t.name.startswith(("layers.", "h.")) and t.role.value not in (
                        "embedding", "position_embedding") and t.name != "vision_tower":
                    a.malloc(tensor_bytes(_shard_tensor(t, spec, tp), precision))
            assert weight_blocks(spec, precision, tp, 1) == ((a.allocated, a.reserved),), (model_id, tp)
            assert a.allocated >= layout.stage_weights_bytes[0]
            checked += 1
    assert checked >= 20


def test_logged_weights_match_the_blocks():
    # Within the rounding of the printed figure (two decimals of a GiB: 5 MiB), plus a MiB; the 0.10.1.1 Qwen2-7B
    # logs print four decimals, 14.2488 GiB, and the blocks give 14.2487 (the tensors alone 14.1930).
    checked = 0
    cases = {c["id"]: c for c in _load_cases()}
    for r in replay_all():
        logged = logged_components(cases[r.id])
        if r.engine != "vllm" or "weights" not in logged or r.id in WEIGHTS_NOT_MODELLED | WEIGHTS_BEYOND_BLOCKS:
            continue
        assert abs(r.budget.weights / GiB - logged["weights"]) * 1024 <= 6.2, r.id
        checked += 1
        if logged["weights"] == 14.2488:
            assert abs(r.budget.weights / GiB - logged["weights"]) * 1024 < 0.2, r.id
    assert checked == 41


def test_weight_blocks_move_the_logs():
    # The RTX 4090 log (vLLM 0.24.0, Qwen2.5-7B, a 4.45 GiB pool): 86,704 tokens predicted, 83,376 logged; +5.2%
    # (87,744) while the weights were their tensors' bytes. The Qwen2.5-3B T4 log: +2.2% to +1.6%.
    results = {r.id: r for r in replay_all()}
    assert results["vllm-qwen25-7b-rtx4090-tp1-v0240"].predicted == 86_704
    assert round(results["vllm-qwen25-7b-rtx4090-tp1-v0240"].error, 3) == 0.040
    # SGLang reads its weights from free memory, which drops by the segments the load reserves: QwQ-32B at TP=4
    # printed "mem usage=15.54 GB" (15.26 GiB of tensors, 15.51 reserved); Llama-3.1-8B 15.11 (14.99, 15.01).
    # Its two TP=4 misses move from +20.5% to +11.7% (L4) and from +9.6% to +5.7% (H100), both still misses.
    assert round(results["sglang-qwq-32b-l4-tp4-v043"].budget.weights / GiB, 2) == 15.51
    assert round(results["sglang-llama31-8b-h100-tp1-fa3"].budget.weights / GiB, 2) == 15.01
    assert [round(results[i].error, 3) for i in ("sglang-qwq-32b-l4-tp4-v043", "sglang-qwen3-235b-a22b-fp8-h100-tp4-01",
                                                 "sglang-llama31-8b-h100-tp1-fa3")] == [0.117, 0.057, 0.003]


def test_every_replayed_case_is_read_at_its_own_release():
    for r in replay_all():
        assert r.budget.engine_version == ".".join(map(str, parse_release(r.release))), r.id


def format_eras(results: list[Replay]) -> str:
    """Per era: cases replayed, within 5%, worst error; held-out cases apart."""
    lines = ["| era | cases | within 5% | worst error | held-out cases | held-out within 5% |",
             "|---|---|---|---|---|---|"]
    eras = {r.era: None for r in sorted(results, key=lambda r: (r.engine, parse_release(r.release)))}
    for era in eras:
        dev = [r for r in results if r.era == era and not r.held_out]
        held = [r for r in results if r.era == era and r.held_out]
        worst = max((r for r in dev), key=lambda r: abs(r.error), default=None)
        lines.append(f"| {era} | {len(dev)} | {sum(r.within for r in dev)} | "
                     f"{f'{worst.error:+.1%}' if worst else '-'} | {len(held)} | {sum(r.within for r in held)} |")
    return "\n".join(lines)


def test_tensor_parallel_non_torch_memory_is_the_logged_median():
    from statistics import median

    from gpuplan.engines.vllm import TENSOR_PARALLEL_NON_TORCH_BYTES

    logged = [c["observed"]["non_torch_gib"] for c in _load_cases()
              if c["engine"] == "vllm" and (c.get("tensor_parallel_size") or 1) > 1
              and c.get("engine_version") == "0.19.0" and c["observed"].get("non_torch_gib")]
    # 2.06-2.21 GiB per GPU at TP=2 and TP=4 on H100: four run logs and four rows of the report's TP table.
    assert len(logged) == 8
    assert TENSOR_PARALLEL_NON_TORCH_BYTES == round(median(logged) * GiB)


# ---- vLLM unit checks -------------------------------------------------------------------------------

LLAMA31_8B = "meta-llama/Llama-3.1-8B-Instruct"


def _llama(dtype: str = "auto", kv: str = "auto"):
    spec = _spec(LLAMA31_8B)
    return spec, resolve_precision(spec, dtype, kv)


def test_page_size_is_block_x_kv_heads_x_k_plus_v_x_bytes():
    spec, _ = _llama()
    # 16 tokens x 8 KV heads x (128 + 128) x 2 bytes = 64 KiB per layer; x 32 layers = 2 MiB per block.
    assert kv_page_size(spec, 8, 2, 16) == 65_536
    b = vllm_budget(spec, resolve_precision(spec), 80 * GiB, kv_cache_memory=4 * GiB, engine_version="0.19.0")
    assert b.num_blocks == 4 * GiB // (65_536 * 32) == 2048
    assert b.kv_cache_tokens == 2048 * 16


def test_mla_caches_one_latent_per_token_and_layer():
    spec = _spec("deepseek-ai/DeepSeek-V3")
    # kv_lora_rank 512 + qk_rope_head_dim 64 = 576 values, no K/V pair and no heads.
    assert kv_page_size(spec, kv_heads_per_rank(spec, 8), 2, 16) == 16 * 576 * 2
    assert sglang_cell_size(spec, 1, 61, 2) == 576 * 61 * 2


def test_fp8_kv_halves_the_page_and_doubles_the_tokens():
    spec, bf16 = _llama()
    _, fp8 = _llama(kv="fp8")
    a = vllm_budget(spec, bf16, 80 * GiB, kv_cache_memory=10 * GiB)
    b = vllm_budget(spec, fp8, 80 * GiB, kv_cache_memory=10 * GiB)
    assert b.page_size_per_layer * 2 == a.page_size_per_layer
    assert b.kv_cache_tokens == 2 * a.kv_cache_tokens
    c = vllm_budget(spec, bf16, 80 * GiB, kv_cache_memory=10 * GiB, kv_cache_dtype="fp8")
    assert c.kv_cache_tokens == b.kv_cache_tokens


def test_kv_cache_memory_override_skips_the_profile_budget():
    spec, p = _llama()
    b = vllm_budget(spec, p, 24 * GiB, kv_cache_memory=3 * GiB)
    assert b.available_kv == 3 * GiB and b.kv_cache_memory_given


def test_budget_arithmetic_and_log_lines():
    spec, p = _llama()
    b = vllm_budget(spec, p, int(79.19 * GiB), gpu_memory_utilization=0.95, max_model_len=16384,
                    gpu_name="NVIDIA H100 80GB HBM3", engine_version="0.19.0")
    assert b.available_kv == b.requested - b.weights - b.activation_peak - b.non_torch
    assert b.max_num_batched_tokens == 8192 and b.max_num_seqs == 1024
    assert b.kv_cache_tokens == b.num_blocks * 16
    assert f"GPU KV cache size: {b.kv_cache_tokens:,} tokens" in b.log_lines
    concurrency = b.kv_cache_tokens / 16384
    assert f"Maximum concurrency for 16,384 tokens per request: {concurrency:.2f}x" in b.log_lines
    assert b.log_lines[0] == "Model loading took 14.99 GiB memory"  # logged by vLLM 0.19.0 for this model


def test_default_batch_limits_follow_gpu_class():
    assert default_batch_limits(80 * GiB, "NVIDIA H100 80GB HBM3") == (8192, 1024)
    assert default_batch_limits(80 * GiB, "NVIDIA A100-SXM4-80GB") == (2048, 256)
    assert default_batch_limits(80 * GiB, "H100", usage_context="llm") == (16384, 1024)
    assert default_batch_limits(24 * GiB, "NVIDIA L4") == (2048, 256)
    assert default_batch_limits(24 * GiB, engine="v0", max_model_len=20000) == (20000, 256)


def test_request_that_does_not_fit_reports_the_longest_that_does():
    spec, p = _llama()
    b = vllm_budget(spec, p, 24 * GiB, kv_cache_memory=2 * GiB, max_model_len=131072)
    assert not b.fits_one_request
    # 2 GiB / (32 layers x 256 KiB per 64-token block, 0.34's) = 256 blocks, of which the null block is not
    # planned with (0.29+): 255 x 64 = 16,320 tokens.
    assert b.max_model_len_that_fits == 16320
    assert any("estimated maximum model length is 16320" in line for line in b.log_lines)


def test_hybrid_sliding_window_model_is_grouped_like_vllm():
    spec = _spec("google/gemma-3-27b-it")
    b = vllm_budget(spec, resolve_precision(spec), int(79.19 * GiB), kv_cache_memory=19 * GiB,
                    max_model_len=8192, gpu_name="H100", engine_version="0.19.0")
    # 10 full + 52 sliding layers: groups of 10 (1 full + 6 sliding), "Add 8 padding layers" in the log.
    assert len(b.groups) == 7 and b.group_size == 10
    assert b.kv_cache_tokens == b.num_blocks // 7 * 16
    # A sliding group needs cdiv(min(1023 + 8192, 8192), 16) + 1 = 513 blocks per 8K request.
    assert b.blocks_per_request == 512 + 6 * 513


def test_v0_counts_blocks_over_all_layers():
    spec, p = _llama()
    b = vllm_budget(spec, p, int(23.58 * GiB), engine="v0", max_model_len=20000, kv_cache_memory=4 * GiB,
                    engine_version="0.6.4")
    assert b.num_blocks == 4 * GiB // (65_536 * 32)
    assert b.log_lines[2] == f"# GPU blocks: {b.num_blocks}"


# ---- tensor / pipeline parallel -----------------------------------------------------------------------


def test_tp_halves_what_it_shards_and_keeps_norms_whole():
    spec, p = _llama()
    full = weights_per_gpu(spec, p, tp=1)
    half = weights_per_gpu(spec, p, tp=2)
    norms = sum(t.total_numel for t in spec.tensors if t.role.value == "norm") * 2
    assert half == (full - norms) // 2 + norms
    assert full == weights_bytes(spec, p)


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    spec = _spec("Qwen/Qwen3-235B-A22B-FP8")  # 4 KV heads
    assert kv_heads_per_rank(spec, 2) == 2
    assert kv_heads_per_rank(spec, 8) == 1
    layout = parallel_layout(spec, resolve_precision(spec), tp=8)
    k_proj = next(t for t in stage_spec(spec, 8, 1, 0).tensors if t.name.endswith("k_proj.weight"))
    assert k_proj.shape == (128, 4096) and layout.kv_heads_per_rank == 1


def test_vocab_is_padded_to_64_then_split():
    spec = _spec("Qwen/Qwen1.5-MoE-A2.7B-Chat")  # vocab 151936 = 64 x 2374
    layout = parallel_layout(spec, resolve_precision(spec), tp=4)
    assert layout.padded_vocab == 151936


def test_invalid_tp_names_the_valid_sizes():
    spec, _ = _llama()
    assert valid_tp_sizes(spec) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(InputError) as err:
        validate_parallel(spec, 3)
    assert "1, 2, 4, 8, 16, 32" in str(err.value)
    odd = spec.model_copy(update={"num_attention_heads": 48})
    with pytest.raises(InputError, match="KV heads"):
        validate_parallel(odd, 12)  # 48 heads split 12 ways, but 8 KV heads and 12 do not divide
    with pytest.raises(InputError):
        vllm_budget(spec, resolve_precision(spec), 80 * GiB, tp=5)


def test_pipeline_split_follows_vllm():
    assert pp_layer_split(32, 2) == (16, 16)
    assert pp_layer_split(61, 4) == (15, 16, 15, 15)  # remainder 1 <= pp - 2: a middle stage takes it
    assert pp_layer_split(62, 4) == (15, 16, 16, 15)
    assert pp_layer_split(63, 4) == (16, 16, 16, 15)  # remainder 3: the stages before the last
    spec, p = _llama()
    layout = parallel_layout(spec, p, tp=1, pp=2)
    first, last = layout.stage_weights_bytes
    assert first + last == weights_bytes(spec, p)  # untied: embedding on stage 0, lm_head on stage 1


# ---- SGLang -------------------------------------------------------------------------------------------


def test_sglang_default_mem_fraction_rule():
    # 0.5.5 on an H100 (81559 MiB), TP=1: reserved = 512 + 8192 x 1.5 + 256 x 2 + 1/8 x 1024 = 13440 MB.
    assert default_mem_fraction_static(81559, engine_version="0.5.5") == round((81559 - 13440) / 81559, 3)
    # 24 GB card: 512 + 2048 x 1.5 + 24 x 2 + 128 = 3760 MB, no 10 GB floor under 60 GB.
    assert default_mem_fraction_static(24576, engine_version="0.5.5") == round((24576 - 3760) / 24576, 3)
    # 0.5.23 adds the piecewise CUDA graphs: 58 capture sizes up to 8192 tokens, 8 MB each.
    assert default_mem_fraction_static(81559) == round((81559 - 13440 - 58 * 8) / 81559, 3)
    # 0.5.23 on 20-35 GB: chunked prefill 4096 and 48 decode graphs: 512 + 4096 x 1.5 + 96 + 128 + 50 x 8.
    assert default_mem_fraction_static(24576) == round((24576 - (512 + 6144 + 96 + 128 + 50 * 8)) / 24576, 3)


def test_sglang_fraction_rule_follows_the_release():
    # Up to 0.4.7: a table by TP size (server_args.py 0.3.6).
    assert default_mem_fraction_static(81559, engine_version="0.3.6") == 0.88
    assert default_mem_fraction_static(81559, tp=8, engine_version="0.3.6") == 0.82
    assert default_mem_fraction_static(81559, tp=8, engine_version="0.2.15") == 0.83
    # 0.4.6: GPUs over 81,920 MB reserve 13 GiB instead (H200, 143771 MiB).
    assert default_mem_fraction_static(143771, engine_version="0.4.6") == (143771 - 13 * 1024) / 143771
    # 0.4.8-0.5.2: by GPU class, H100 at TP=1 reserves 9.5 + 1/2 GB.
    assert default_mem_fraction_static(81559, engine_version="0.4.9") == round((81559 - 10 * 1024) / 81559, 3)


def test_sglang_release_out_of_range_is_one_line():
    with pytest.raises(InputError, match="0.2.15 to 0.5.23"):
        sglang_budget(_spec(LLAMA31_8B), resolve_precision(_spec(LLAMA31_8B)), 80 * GiB, engine_version="0.6.0")


def test_sglang_pool_formula():
    spec, p = _llama()
    b = sglang_budget(spec, p, 80 * GiB, mem_fraction_static=0.9, init_overhead_bytes=0)
    rest = (80 * GiB - b.weights) - 80 * GiB * 0.1
    assert b.cell_size == 8 * 256 * 32 * 2
    assert b.max_total_num_tokens == int(rest) // b.cell_size
    assert b.log_lines[-1].startswith(f"KV Cache is allocated. #tokens: {b.max_total_num_tokens}, K size: ")


# ---- releases ------------------------------------------------------------------------------------------------


def test_release_strings_parse_as_vllm_prints_them():
    assert parse_release("0.19") == (0, 19, 0)
    assert parse_release("v0.6.4.post1") == (0, 6, 4)
    assert parse_release("0.20.2rc1.dev9+g01d4d1ad3") == (0, 20, 2)
    assert parse_release("0.10.1.1") == (0, 10, 1)  # a hotfix release takes the rules of the one it extends
    with pytest.raises(ValueError):
        parse_release("latest")


@pytest.mark.parametrize("bad", ["0.2.4", "0.35.0", "1.0", "latest", ""])
def test_release_outside_the_range_is_one_line_naming_the_range(bad):
    spec, p = _llama()
    with pytest.raises(InputError) as err:
        vllm_budget(spec, p, 80 * GiB, engine_version=bad)
    assert "0.2.5 to 0.34.0" in str(err.value) and "\n" not in str(err.value)


def test_each_release_takes_its_own_rule():
    # The rows of gpuplan.engines.vllm_releases, read in the wheels named there.
    assert vllm_release("0.2.5").budget_rule == "total_used"
    assert vllm_release("0.3.1").budget_rule == "reserved_peak"
    assert vllm_release("0.6.4").budget_rule == "allocated_peak"
    assert vllm_release("0.6.6").budget_rule == "snapshot"
    assert vllm_release("0.8.5").engines == ("v1", "v0") and vllm_release("0.8.5").budget_rule == "allocated_peak"
    assert vllm_release("0.9.1").budget_rule == "snapshot" and vllm_release("0.9.1").hybrid_kv
    assert vllm_release("0.20.0").budget_rule == "cuda_graph" and vllm_release("0.20.0").gpu_memory_utilization == 0.92
    newest = vllm_release()
    assert newest.version == "0.34.0" and newest.budget_rule == "extensible" and newest.block_size == 64


def test_v0_budget_rules_differ_by_what_they_charge():
    spec, p = _llama()
    common = {"max_model_len": 8192, "engine": "v0", "gpu_memory_utilization": 0.9}
    total = int(23.58 * GiB)
    allocated = vllm_budget(spec, p, total, engine_version="0.6.4", **common)
    reserved = vllm_budget(spec, p, total, engine_version="0.5.0", **common)
    snapshot = vllm_budget(spec, p, total, engine_version="0.6.6", **common)
    # 0.6.4 charges the CUDA context with the non-torch memory, 0.3.1-0.6.3 and 0.6.5+ do not.
    assert allocated.non_torch - snapshot.non_torch == round(0.35 * GiB) - GiB // 4
    # 0.6.5+ charge the replayed profile run's allocated peak (gpuplan.engines.vllm_v0_reserved), 0.6.4 the generic
    # formula; the weights are the same.
    assert allocated.activation_peak == max(allocated.activation_forward, allocated.activation_sampler)
    assert snapshot.activation_peak > allocated.activation_peak and snapshot.weights == allocated.weights
    assert snapshot.available_kv - allocated.available_kv == (allocated.non_torch - snapshot.non_torch) - (
        snapshot.activation_peak - allocated.activation_peak)
    # 0.3.1-0.6.3 charge what the allocator reserved by the end of the profile run, 0.6.5+ its allocated peak;
    # the rest of the charge is the same.
    assert reserved.non_torch == snapshot.non_torch and reserved.weights == snapshot.weights
    assert reserved.activation_peak > snapshot.activation_peak
    assert reserved.available_kv == snapshot.available_kv - (reserved.activation_peak - snapshot.activation_peak)
    assert allocated.available_kv == allocated.requested - allocated.weights - allocated.activation_peak \
        - allocated.non_torch


def test_cuda_graph_estimate_is_charged_from_0_20():
    spec, p = _llama()
    kw = {"gpu_memory_utilization": 0.9, "max_model_len": 8192, "gpu_name": "H100"}
    before = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.19.0", **kw)
    after = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.20.0", **kw)
    assert before.cuda_graph is None and after.cuda_graph == round(0.44 * GiB)
    assert before.available_kv - after.available_kv == after.cuda_graph


def test_extensible_kv_cache_keeps_a_margin_and_the_transient_peak_free():
    spec, p = _llama()
    total = int(79.19 * GiB)
    b = vllm_budget(spec, p, total, max_model_len=8192, gpu_name="H100")
    assert b.engine_version == "0.34.0" and b.gpu_memory_utilization == 1.0 and b.block_size == 64
    transient = b.activation_peak + b.cuda_graph
    margin = max(GiB, int(0.75 * transient))
    used = b.weights + b.non_torch + b.cuda_graph
    assert b.available_kv == total - round(0.51 * GiB) - used - margin - transient


def test_token_report_follows_the_release():
    spec = _spec("google/gemma-3-27b-it")
    p = resolve_precision(spec)
    kw = {"kv_cache_memory": 19 * GiB, "max_model_len": 131072, "gpu_name": "H100"}
    v20 = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.20.0", **kw)
    v21 = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.21.0", **kw)
    assert v20.num_blocks == v21.num_blocks
    # Up to 0.20: num_blocks // groups x block_size; from 0.21: int(concurrency x max_model_len), which counts
    # the sliding groups at their window and so reports about five times more tokens at a 128K context.
    assert v20.kv_cache_tokens == v20.num_blocks // 7 * 16
    assert v21.kv_cache_tokens == int(v21.max_concurrency * 131072) > 4 * v20.kv_cache_tokens


def test_max_model_len_auto_and_the_kv_cache_memory_that_pins_the_pool():
    spec, p = _llama()
    b = vllm_budget(spec, p, 24 * GiB, max_model_len=-1, engine_version="0.19.0", gpu_name="L4")
    assert b.max_model_len_auto == min(131072, b.max_model_len_that_fits) == b.max_model_len_that_fits < 131072
    # The budget is read at the length auto picks (kv_cache_utils.py _auto_fit_max_model_len, 0.14.0): one
    # request of it fits, and the concurrency is counted against it.
    assert b.max_model_len == b.max_model_len_auto and b.fits_one_request
    assert b.max_concurrency == b.num_blocks / b.blocks_per_request >= 1
    assert b.log_lines[2] == (f"Auto-fit max_model_len: reduced from 131072 to {b.max_model_len} to fit in "
                              f"available GPU memory ({b.available_kv / GiB:.2f} GiB available for KV cache)")
    pinned = vllm_budget(spec, p, 24 * GiB, max_model_len=8192, engine_version="0.19.0",
                         kv_cache_memory=b.kv_cache_memory_to_pin)
    assert pinned.num_blocks == b.num_blocks
    with pytest.raises(InputError, match="0.14.0"):
        vllm_budget(spec, p, 24 * GiB, max_model_len=-1, engine_version="0.11.0")
    assert vllm_budget(spec, p, 24 * GiB, max_model_len=8192, engine_version="0.9.1").kv_cache_memory_to_pin is None


def test_max_model_len_auto_keeps_the_context_that_fits_and_says_when_nothing_does():
    spec, p = _llama()
    whole = vllm_budget(spec, p, int(79.19 * GiB), max_model_len=-1, gpu_name="H100")
    assert whole.max_model_len == 131072 and whole.fits_one_request
    # 0.34.0 on an H100 samples with FlashInfer, which vLLM says before it loads the weights.
    assert whole.log_lines[0] == "Using FlashInfer for top-p & top-k sampling."
    assert "Auto-fit max_model_len: full model context length 131072 fits" in whole.log_lines[3]
    # No pool at all: vLLM stops with the auto-fit error, and the budget does not fit.
    none = vllm_budget(spec, p, 17 * GiB, max_model_len=-1, gpu_name="L4")
    assert not none.fits_one_request and none.max_model_len == 131072
    assert none.log_lines[-1].startswith("Cannot auto-fit max_model_len: not enough GPU memory")


def test_null_block_is_left_out_of_the_fit_from_0_29():
    # 0.29.0 kv_cache_utils.py: "Reserve the null block BlockPool permanently holds back, so auto-fit and the
    # capacity check both plan against usable blocks" (absent in 0.28.0); the pool keeps every block.
    spec, p = _llama()
    kw = {"max_model_len": -1, "gpu_name": "L4", "gpu_memory_utilization": 0.9}
    before = vllm_budget(spec, p, 24 * GiB, engine_version="0.28.0", **kw)
    after = vllm_budget(spec, p, 24 * GiB, engine_version="0.29.0", **kw)
    assert not vllm_release("0.28.0").null_block_reserved and vllm_release("0.29.0").null_block_reserved
    assert before.num_blocks == after.num_blocks
    assert before.max_model_len_that_fits == before.num_blocks * 16
    assert after.max_model_len_that_fits == (after.num_blocks - 1) * 16 == after.max_model_len
    # A request of exactly num_blocks x block_size tokens fits in 0.28 and not from 0.29.
    exact = {"max_model_len": before.num_blocks * 16, "gpu_name": "L4", "gpu_memory_utilization": 0.9}
    assert vllm_budget(spec, p, 24 * GiB, engine_version="0.28.0", **exact).fits_one_request
    assert not vllm_budget(spec, p, 24 * GiB, engine_version="0.29.0", **exact).fits_one_request


def test_release_without_the_engine_asked_for():
    spec, p = _llama()
    with pytest.raises(InputError, match="no V0 engine"):
        vllm_budget(spec, p, 80 * GiB, engine="v0", engine_version="0.11.0")
    with pytest.raises(InputError, match="no V1 engine"):
        vllm_budget(spec, p, 80 * GiB, engine="v1", engine_version="0.6.4")


def test_installed_engine_version_is_read_from_metadata_not_imported(monkeypatch):
    import sys
    from importlib import metadata

    import gpuplan
    from gpuplan.engines.serving import _installed_version

    real = metadata.version

    def fake(name):
        return {"vllm": "0.19.0", "sglang": "0.9.9"}.get(name) or real(name)

    monkeypatch.setattr(metadata, "version", fake)
    _installed_version.cache_clear()  # the lookup is cached per process: read the fake one, and forget it after
    try:
        r = gpuplan.estimate(LLAMA31_8B, engine="vllm", gpu="H100", max_model_len=8192)
        assert r.serving.engine_version == "0.19.0"
        assert any("vllm 0.19.0 is installed here" in n for n in r.notes)
        s = gpuplan.estimate(LLAMA31_8B, engine="sglang", gpu="H100", max_model_len=8192)
        assert s.serving.engine_version == "0.5.23"
        assert any("outside the releases gpuplan models" in n for n in s.notes)
        given = gpuplan.estimate(LLAMA31_8B, engine="vllm", gpu="H100", engine_version="0.6.4", max_model_len=8192)
        assert given.serving.engine_version == "0.6.4"
        assert "vllm" not in sys.modules and "sglang" not in sys.modules
        with pytest.raises(InputError, match="outside the supported range 5.17.0 to 5.25.0"):
            gpuplan.estimate(LLAMA31_8B, engine="transformers", engine_version="0.19.0")
    finally:
        _installed_version.cache_clear()


def test_v1_profile_run_logits_follow_the_release():
    spec, p = _llama()
    kw = {"engine": "v1", "max_model_len": 8192, "gpu_name": "H100", "gpu_memory_utilization": 0.9}
    v070 = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.7.0", **kw)
    v073 = vllm_budget(spec, p, int(79.19 * GiB), engine_version="0.7.3", **kw)
    tokens, h, vocab = v070.max_num_batched_tokens, spec.hidden_size, 128256  # 128256 is a multiple of 64
    # 0.7.0: the hidden states and bf16 logits for all 8192 batched tokens (2 GiB for Llama-3.1-8B).
    assert v070.activation_sampler == tokens * h * 2 + tokens * vocab * 2
    # 0.7.3: one logit row per request (1024 sequences), no sampler.
    assert v073.activation_sampler == tokens * h * 2 + 1024 * h * 2 + 1024 * vocab * 2
    assert v070.max_num_seqs == v073.max_num_seqs == 1024 and v070.log_lines[2].startswith("# GPU blocks: ")


def test_the_longest_context_search_finds_the_same_length_from_any_guess():
    """vLLM bisects [1, upper]; gpuplan starts from a guess and gallops: the same length wherever it starts."""
    from gpuplan.engines.vllm import _longest_that_fits

    def bisect(upper, fits):
        lo, hi, best = 1, upper, 0
        if not fits(1):
            return 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if fits(mid):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    for upper in (1, 2, 3, 17, 4096, 163840):
        for longest in {0, 1, 2, upper // 3, upper - 1, upper, upper + 5}:
            def fits(n, longest=longest):
                return n <= longest
            for guess in {-3, 0, 1, 2, longest - 1, longest, longest + 1, upper // 2, upper, upper + 9}:
                assert _longest_that_fits(upper, fits, guess) == bisect(upper, fits), (upper, longest, guess)
