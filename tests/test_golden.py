"""Golden outputs: every bundled model under every engine at a few workloads, plus plans, sweeps, checks and
training estimates, compared field by field with JSON recorded in tests/fixtures/golden/.

The files pin what the library returns (the `--format json` contract): a refactor must leave every number,
note and error message as it was. A change made on purpose is recorded again with

    GPUPLAN_REGENERATE_GOLDEN=1 pytest tests/test_golden.py

and the diff of tests/fixtures/golden/ shows exactly what moved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from test_gguf import llama3_8b, qwen25_7b

import gpuplan
from gpuplan.errors import GpuplanError
from gpuplan.models.catalog import load_catalog

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
REGENERATE = os.environ.get("GPUPLAN_REGENERATE_GOLDEN") == "1"

# (case name, estimate keywords): the transformers engine at its default and at a long batched generate(),
# spread over two GPUs, quantized; vLLM at its defaults, with a pinned context and an fp8 KV cache, and at
# tensor parallel 2; SGLang at its defaults.
ESTIMATES: list[tuple[str, dict[str, Any]]] = [
    ("transformers-default", {}),
    ("transformers-b8-s4096-n16", {"batch": 8, "seq": 4096, "new_tokens": 16, "gpu": "H100"}),
    ("transformers-pp2-eager", {"batch": 2, "seq": 2048, "attn": "eager", "pipeline_parallel": 2}),
    ("transformers-int4", {"dtype": "int4", "kv_dtype": "fp8", "seq": 8192}),
    ("vllm-h100", {"engine": "vllm", "gpu": "H100"}),
    ("vllm-a100-8k-fp8", {"engine": "vllm", "gpu": "A100-80GB", "max_model_len": 8192, "kv_dtype": "fp8",
                          "gpu_memory_utilization": 0.85, "batch": 4}),
    ("vllm-tp2-l40s", {"engine": "vllm", "gpu": "L40S", "tensor_parallel": 2, "max_model_len": 4096,
                       "max_num_seqs": 64, "max_num_batched_tokens": 4096}),
    ("sglang-h100", {"engine": "sglang", "gpu": "H100"}),
    ("sglang-h200-tp2", {"engine": "sglang", "gpu": "H200", "tensor_parallel": 2, "max_model_len": 16384,
                         "mem_fraction_static": 0.8}),
]

TRAINING: list[tuple[str, dict[str, Any]]] = [
    ("train-full-bf16", {"batch": 2, "seq": 1024, "gpu": "H100"}),
    ("train-qlora-ckpt", {"method": "qlora", "grad_checkpointing": True, "batch": 4, "seq": 2048}),
    ("train-zero3-mixed", {"precision": "mixed", "zero": 3, "gpus": 8, "batch": 1, "seq": 4096}),
]


def _outcome(call) -> Any:
    try:
        return call().model_dump(mode="json")
    except GpuplanError as exc:
        return {"error": type(exc).__name__, "message": str(exc), "hint": getattr(exc, "hint", None)}


def _compare(name: str, got: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    if REGENERATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(path.read_text())
    assert sorted(got) == sorted(want), f"{name}: cases differ"
    for case in want:
        assert got[case] == want[case], f"{name} / {case} differs from the recorded output"


MODEL_IDS = [e.id for e in load_catalog().entries]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_every_bundled_model_under_every_engine(model_id, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    model = gpuplan.load_model(model_id)
    got: dict[str, Any] = {}
    for case, kwargs in ESTIMATES:
        got[case] = _outcome(lambda kwargs=kwargs: gpuplan.estimate(model, **kwargs))
    for case, kwargs in TRAINING:
        got[case] = _outcome(lambda kwargs=kwargs: gpuplan.train(model, **kwargs))
    _compare(model_id.replace("/", "--"), got)


PLAN_MODELS = ["meta-llama/Llama-2-70b-hf", "mistralai/Mixtral-8x7B-v0.1", "deepseek-ai/DeepSeek-R1",
               "Qwen/Qwen2.5-7B-Instruct"]


@pytest.mark.parametrize("model_id", PLAN_MODELS)
def test_plans_and_sweeps(model_id):
    gpus = ["H100", "A100-80GB", "L4", "RTX 4090", "H200"]
    got = {
        "plan-vllm": _outcome(lambda: gpuplan.plan(model_id, gpus=gpus, seq=8192, batch=4)),
        "plan-sglang-fp8": _outcome(lambda: gpuplan.plan(model_id, gpus=gpus, engine="sglang", dtype="fp8",
                                                         seq=4096, mem_fraction_static=0.85)),
        "plan-transformers": _outcome(lambda: gpuplan.plan(model_id, gpus=gpus, engine="transformers",
                                                           seq=2048)),
        "sweep-transformers": _outcome(lambda: gpuplan.sweep(model_id, seq="1k..8k", batch=[1, 8],
                                                             dtype="bf16,int4", gpu=["H100", "L4"])),
        "sweep-vllm": _outcome(lambda: gpuplan.sweep(model_id, seq="4k,32k", batch=[1, 16], engine="vllm",
                                                     gpu="H100", tensor_parallel=2,
                                                     gpu_memory_utilization=0.92)),
    }
    _compare("plan--" + model_id.replace("/", "--"), got)


def test_llamacpp_and_plan_files(tmp_path):
    llama = llama3_8b(tmp_path)
    qwen = qwen25_7b(tmp_path)
    got = {
        "llama-default": _outcome(lambda: gpuplan.estimate(str(llama))),
        "llama-ngl20-c32k-fa": _outcome(lambda: gpuplan.estimate(str(llama), n_gpu_layers=20, ctx_size=32768,
                                                                 flash_attn="on", gpu="RTX 4090")),
        "llama-parallel-q8": _outcome(lambda: gpuplan.estimate(str(llama), parallel=4, cache_type_k="q8_0",
                                                               cache_type_v="q8_0", ubatch_size=1024,
                                                               kv_unified=True)),
        "llama-no-offload": _outcome(lambda: gpuplan.estimate(str(llama), kv_offload=False, op_offload=False,
                                                              batch_size=512, swa_full=True, seq=8192)),
        "qwen-auto-parallel": _outcome(lambda: gpuplan.estimate(str(qwen), parallel="auto", n_gpu_layers="all")),
        "qwen-bad-engine-flag": _outcome(lambda: gpuplan.estimate("Qwen/Qwen2.5-7B-Instruct", ubatch_size=256)),
        "qwen-sweep": _outcome(lambda: gpuplan.sweep(str(qwen), seq="1k,4k", batch=[1, 2], engine="llama.cpp",
                                                     gpu="RTX 4090")),
        "check-example": _outcome(lambda: gpuplan.check(Path(__file__).parents[1] / "examples" / "gpuplan.yaml")),
    }
    for result in got.values():  # the GGUF files live in a temporary folder: keep only their names
        if isinstance(result, dict) and isinstance(result.get("llamacpp"), dict):
            result["llamacpp"]["file"] = Path(result["llamacpp"]["file"]).name
            result["model"] = Path(result["model"]).name
        if isinstance(result, dict) and result.get("model", "").endswith(".gguf"):
            result["model"] = Path(result["model"]).name
    got["check-example"]["file"] = Path(got["check-example"]["file"]).name  # the same wherever the checkout is
    _compare("llamacpp-and-plan-files", got)
