"""The engine options the web form and the HTTP API offer: the one list of them on the web side.

Each entry is a keyword of :func:`gpuplan.api.estimate`, with the same name and default, so a request's
fields pass to the facade unchanged (tests/test_web_api.py checks every name and default against the
facade's signature). ``engines`` says which engines read it: the page shows an option only for those,
and the facade names a misapplied one in its own error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

OptionKind = Literal["int", "float", "text", "bool", "choice"]


class EngineOption(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: OptionKind
    default: Any = None
    engines: tuple[str, ...]
    description: str
    choices: tuple[str, ...] = ()


_VLLM = ("vllm",)
_SERVING = ("vllm", "sglang")
_LLAMACPP = ("llama.cpp",)
_TRANSFORMERS = ("transformers",)

# Descriptions as the CLI's --help words them (gpuplan/cli/app.py).
ENGINE_OPTIONS: tuple[EngineOption, ...] = (
    EngineOption(name="gpu_memory_utilization", kind="float", engines=_VLLM,
                 description="vLLM: fraction of GPU memory it may use (default 0.9)."),
    EngineOption(name="max_model_len", kind="int", engines=_SERVING,
                 description="Serving engines: context length per request (default: seq, else the model's)."),
    EngineOption(name="max_num_seqs", kind="int", engines=_VLLM, description="vLLM: sequences per batch."),
    EngineOption(name="max_num_batched_tokens", kind="int", engines=_VLLM,
                 description="vLLM: tokens per forward pass (sets the profile run's activations)."),
    EngineOption(name="block_size", kind="int", default=16, engines=_VLLM,
                 description="vLLM: tokens per KV cache block."),
    EngineOption(name="kv_cache_memory", kind="text", engines=_VLLM,
                 description="vLLM: fixed KV cache size, e.g. 40GiB."),
    EngineOption(name="mem_fraction_static", kind="float", engines=("sglang",),
                 description="SGLang: fraction for weights + KV cache (default: SGLang's rule)."),
    EngineOption(name="n_gpu_layers", kind="text", engines=_LLAMACPP,
                 description="llama.cpp: layers on the GPU, a number or all (default all)."),
    EngineOption(name="ctx_size", kind="int", engines=_LLAMACPP,
                 description="llama.cpp: context over all sequences; 0 = the model's (default: seq)."),
    EngineOption(name="ubatch_size", kind="int", default=512, engines=_LLAMACPP,
                 description="llama.cpp: physical batch, tokens per graph."),
    EngineOption(name="batch_size", kind="int", default=2048, engines=_LLAMACPP,
                 description="llama.cpp: logical batch."),
    EngineOption(name="parallel", kind="text", default=1, engines=_LLAMACPP,
                 description="llama.cpp: sequences at once, a number or auto."),
    EngineOption(name="kv_unified", kind="bool", default=False, engines=_LLAMACPP,
                 description="llama.cpp: one KV cache shared by all sequences."),
    EngineOption(name="cache_type_k", kind="text", default="f16", engines=_LLAMACPP,
                 description="llama.cpp: K cache type: f16, bf16, f32, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1."),
    EngineOption(name="cache_type_v", kind="text", default="f16", engines=_LLAMACPP,
                 description="llama.cpp: V cache type, as cache_type_k."),
    EngineOption(name="flash_attn", kind="choice", default="auto", engines=_LLAMACPP, choices=("auto", "on", "off"),
                 description="llama.cpp: flash attention."),
    EngineOption(name="swa_full", kind="bool", default=False, engines=_LLAMACPP,
                 description="llama.cpp: full-size cache for sliding-window layers."),
    EngineOption(name="kv_offload", kind="bool", default=True, engines=_LLAMACPP,
                 description="llama.cpp: KV cache on the GPU (false: --no-kv-offload)."),
    EngineOption(name="op_offload", kind="bool", default=True, engines=_LLAMACPP,
                 description="llama.cpp: copy host layers' weights to the GPU to compute (false: --no-op-offload)."),
    EngineOption(name="expandable_segments", kind="bool", engines=_TRANSFORMERS,
                 description="transformers: PyTorch's expandable segments (no allocator slack). Default: the "
                             "server's PYTORCH_CUDA_ALLOC_CONF."),
)

_PYTHON_TYPES: dict[str, Any] = {"int": int, "float": float, "text": str, "bool": bool, "choice": str}


def option_annotation(option: EngineOption) -> Any:
    """The type a request field of this option accepts (None: not given, the facade's default applies)."""
    if option.name in ("n_gpu_layers", "parallel"):
        return int | str | None  # a number, or all / auto
    return _PYTHON_TYPES[option.kind] | None
