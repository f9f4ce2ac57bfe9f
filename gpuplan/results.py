"""Result models: what the library returns, what the CLI renders, what JSON output carries.

The JSON contract (docs/json.md, ``gpuplan schema``) is ``EstimateResult.model_dump()``; fields are only
ever added within a schema version. Byte fields are integers, per GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Bump the major part when a field is removed or changes meaning, the minor part when one is added.
SCHEMA_VERSION = "1.0"


class ServingBudget(BaseModel):
    """What a serving engine (vLLM, SGLang) does with the memory left after the weights, per GPU."""

    model_config = ConfigDict(frozen=True)

    engine: str = Field(description="vllm | sglang")
    gpu_memory_bytes: int = Field(description="the total the engine budgets from (CUDA's total per GPU)")
    memory_fraction: float = Field(description="--gpu-memory-utilization (vLLM) or --mem-fraction-static (SGLang)")
    kv_cache_tokens: int = Field(description="tokens the KV cache holds (vLLM 'GPU KV cache size', SGLang "
                                             "max_total_num_tokens)")
    max_model_len: int
    max_concurrency: float = Field(description="requests of max_model_len tokens that fit at once")
    fits_one_request: bool = Field(description="one request of max_model_len fits (else the engine refuses "
                                               "to start)")
    max_model_len_that_fits: int = Field(description="the longest context that fits (vLLM --max-model-len auto)")
    num_blocks: int | None = Field(default=None, description="vLLM '# GPU blocks'")
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    log_lines: list[str] = Field(default_factory=list, description="the startup lines the engine would print")


class LlamaCppRun(BaseModel):
    """How llama.cpp lays out a GGUF model under the given flags (docs/gguf.md)."""

    model_config = ConfigDict(frozen=True)

    file: str = Field(description="the .gguf file read (the first part of a split model)")
    file_type: str | None = Field(default=None, description="general.file_type of the GGUF: Q4_K_M, Q8_0 ...")
    n_gpu_layers: int | None = Field(description="--n-gpu-layers as given; null means every layer")
    layers: int = Field(description="repeating layers llama.cpp loads (block_count without MTP layers)")
    layers_on_gpu: int = Field(description="repeating layers whose weights are on the GPU")
    output_on_gpu: bool = Field(description="the output layer (output.weight, output_norm) is on the GPU")
    n_ctx: int = Field(description="KV cache cells over all sequences: the context padded to 256")
    n_ctx_seq: int = Field(description="context one sequence (server slot) can use")
    n_seq: int = Field(description="sequences decoded at once (--parallel)")
    kv_unified: bool
    n_ubatch: int = Field(description="tokens of the worst-case graph llama.cpp reserves (--ubatch-size)")
    flash_attn: bool
    cache_type_k: str
    cache_type_v: str
    kv_offload: bool = Field(description="false with --no-kv-offload: the KV cache stays in host memory")
    kv_cells_swa: int | None = Field(default=None, description="cells per sequence of sliding-window layers")
    host_bytes: int = Field(description="host (CPU) memory beside the GPU: the sum of the four host_* below")
    host_weights_bytes: int = Field(description="weights left in host memory (token_embd always is); "
                                                "memory-mapped from the file by default")
    host_kv_bytes: int = Field(description="KV cache of the layers in host memory (all with --no-kv-offload)")
    host_compute_bytes: int = Field(description="llama.cpp's host compute buffer (CUDA_Host)")
    host_output_bytes: int = Field(description="the logits kept in host memory")


class EstimateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    model: str = Field(description="model id or path as resolved")
    source: str = Field(description="local | catalog | hub | hub-cache | modelscope | modelscope-cache")
    revision: str | None = None
    commit: str | None = None
    model_type: str
    attention: str = Field(description="MHA | GQA | MQA | MLA")
    engine: str
    attn_implementation: str
    dtype: str = Field(description="weights as stored on the GPU: fp32, fp16, bf16, fp8, int8, int4-gptq, nf4 ...")
    compute_dtype: str
    kv_dtype: str
    batch: int
    seq: int = Field(description="tokens per sequence held in the KV cache: prompt + generated")
    prompt_tokens: int
    new_tokens: int
    gpus: int = Field(default=1, description="GPUs the model is spread over: tensor x pipeline parallel")
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu: str | None = Field(default=None, description="GPU the fit is checked against, when one was named")
    gpu_memory_bytes: int | None = Field(default=None, description="memory of that GPU, per GPU")
    fits: bool | None = Field(default=None, description="the workload fits that GPU (null when no GPU was named)")
    headroom_bytes: int | None = Field(default=None, description="GPU memory left after total_bytes, per GPU")
    parameters: int = Field(description="parameters in the checkpoint's text model (published count)")
    loaded_parameters: int = Field(description="parameters the engine loads (without MTP layers)")
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int = Field(description="weights + kv cache + activations: torch.cuda.max_memory_allocated")
    total_bytes: int = Field(description="peak_allocated + overhead: what the card must hold")
    components: dict[str, int] = Field(
        default_factory=dict,
        description="named parts of the estimate: of the activation peak (transformers), of every GPU and host "
                    "buffer (llama.cpp)")
    serving: ServingBudget | None = Field(default=None, description="KV capacity under --engine vllm|sglang")
    llamacpp: LlamaCppRun | None = Field(
        default=None, description="layer placement and cache layout under --engine llama.cpp")
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
