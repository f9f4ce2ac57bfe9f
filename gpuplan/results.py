"""Result models: what the library returns, what the CLI renders, what JSON output carries.

The JSON contract (docs/json.md, ``gpuplan schema``) is ``EstimateResult.model_dump()``; fields are only
ever added within a schema version. Byte fields are integers, per GPU.
"""


from pydantic import BaseModel, Field

from gpuplan.results_base import (  # noqa: F401 - the shared parts, importable from here as they always were
    _CONFIG,
    SCHEMA_VERSION,
    FitSuggestion,
    GpuFit,
    InferenceMemory,
    MemoryBreakdown,
    Output,
    _no_entries,
    _no_items,
)

# The outputs of sweep and train live in gpuplan/results_sweep_train.py and load on first use from here
# (``from gpuplan.results import TrainResult`` works as before): an estimate or a plan does not define them.
_SWEEP_TRAIN = ("SweepGpu", "SweepPoint", "SweepResult", "TrainResult")


def __getattr__(name: str) -> type[BaseModel]:
    if name in _SWEEP_TRAIN:
        from gpuplan import results_sweep_train

        return getattr(results_sweep_train, name)
    raise AttributeError(f"module 'gpuplan.results' has no attribute {name!r}")


class ServingBudget(BaseModel):
    """What a serving engine (vLLM, SGLang) does with the memory left after the weights, per GPU."""

    model_config = _CONFIG

    engine: str = Field(description="vllm | sglang")
    engine_version: str | None = Field(default=None, description="the engine release whose startup budget is "
                                                                 "modelled (--engine-version)")
    gpu_memory_bytes: int = Field(description="the total the engine budgets from (CUDA's total per GPU)")
    memory_fraction: float = Field(description="--gpu-memory-utilization (vLLM) or --mem-fraction-static (SGLang)")
    kv_cache_tokens: int = Field(description="tokens the KV cache holds (vLLM 'GPU KV cache size', SGLang "
                                             "max_total_num_tokens)")
    max_model_len: int
    max_concurrency: float = Field(description="requests of max_model_len tokens that fit at once")
    fits_one_request: bool = Field(description="one request of max_model_len fits (else the engine refuses "
                                               "to start)")
    max_model_len_that_fits: int = Field(description="the longest context that fits, as vLLM's startup error "
                                                     "estimates it")
    max_model_len_auto: int | None = Field(default=None, description="what vLLM --max-model-len auto (-1) picks: "
                                                                     "the model's context or the longest that "
                                                                     "fits; null in releases without it")
    kv_cache_memory_bytes: int | None = Field(default=None, description="vLLM --kv-cache-memory that pins this KV "
                                                                        "pool without profiling; null in releases "
                                                                        "without the flag")
    num_blocks: int | None = Field(default=None, description="vLLM '# GPU blocks'")
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    sampler: str | None = Field(default=None, description="vLLM: the sampler of the profile run's dummy sampler "
                                                          "pass, sort, in_place (the Triton kernel) or flashinfer "
                                                          "(--flashinfer-sampler); null for SGLang and where the "
                                                          "profile run samples nothing")
    log_lines: list[str] = Field(default_factory=_no_items, description="the startup lines the engine would print")


class LlamaCppRun(BaseModel):
    """How llama.cpp lays out a GGUF model under the given flags (docs/gguf.md)."""

    model_config = _CONFIG

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


class GpuMemory(InferenceMemory):
    """One GPU's share when transformers spreads the model over several GPUs (device_map="auto")."""

    index: int
    first_layer: int = Field(description="first decoder layer on this GPU")
    layers: int = Field(description="decoder layers on this GPU")


class EngineEstimate(InferenceMemory):
    """What an engine computes for one workload on one kind of GPU: the breakdown, the workload as the engine
    reads it, and the engine's own details. :class:`EstimateResult` adds the model and the GPU verdict."""

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
    fits: bool | None = Field(default=None, description="the workload fits that GPU (null when no GPU was named)")
    fit_reason: str | None = Field(default=None, description="why it does not fit, when it does not")
    suggestions: list[FitSuggestion] = Field(
        default_factory=_no_items, description="when it does not fit: changes that would make it fit, each estimated "
                                          "(the CLI adds them; gpuplan.advice computes them)")
    components: dict[str, int] = Field(
        default_factory=_no_entries,
        description="named parts of the estimate: of the activation peak (transformers), of every GPU and host "
                    "buffer (llama.cpp)")
    serving: ServingBudget | None = Field(default=None, description="KV capacity under --engine vllm|sglang")
    per_gpu: list[GpuMemory] | None = Field(
        default=None, description="transformers over several GPUs (device_map): each GPU's share; the top-level "
                                  "byte fields are the most loaded GPU's")
    llamacpp: LlamaCppRun | None = Field(
        default=None, description="layer placement and cache layout under --engine llama.cpp")
    notes: list[str] = Field(default_factory=_no_items)
    warnings: list[str] = Field(default_factory=_no_items)


class EstimateResult(Output, GpuFit, EngineEstimate):
    """``gpuplan estimate``: one workload of one model under one engine, per GPU."""

    model: str = Field(description="model id or path as resolved")
    source: str = Field(description="local | catalog | hub | hub-cache | modelscope | modelscope-cache")
    revision: str | None = None
    commit: str | None = None
    model_type: str
    attention: str = Field(description="MHA | GQA | MQA | MLA")
    engine: str
    parameters: int = Field(description="parameters in the checkpoint's text model (published count)")
    loaded_parameters: int = Field(description="parameters the engine loads (without MTP layers)")


class DeploymentCheck(BaseModel):
    """One deployment of a plan file, checked (``gpuplan check``). Bytes are per GPU."""

    model_config = _CONFIG

    name: str = Field(description="the deployment's name in the plan file")
    line: int | None = Field(default=None, description="line of the deployment in the plan file (1-based)")
    passed: bool = Field(description="every requirement of the deployment holds")
    reasons: list[str] = Field(default_factory=_no_items, description="why it failed; empty when it passed")
    model: str = Field(description="model id or path as resolved")
    engine: str
    gpu: str = Field(description="GPU the deployment runs on")
    gpus: int = Field(description="GPUs: tensor x pipeline parallel")
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_bytes: int = Field(description="memory of one GPU that a CUDA process can allocate from")
    total_bytes: int = Field(description="the estimate's total per GPU")
    free_bytes: int = Field(description="gpu_memory_bytes - total_bytes (negative: over by that much)")
    required_free_bytes: int = Field(description="the deployment's headroom in bytes (0 when none was asked)")
    max_model_len: int | None = Field(default=None, description="serving engines: context per request checked")
    max_concurrency: float | None = Field(
        default=None, description="serving engines: requests of max_model_len tokens the KV cache holds at once")
    min_concurrency: float | None = Field(
        default=None, description="serving engines: the concurrency the deployment requires")
    max_model_len_that_fits: int | None = Field(
        default=None, description="serving engines: the longest context one request can have")
    estimate: EstimateResult = Field(description="the full estimate behind the verdict")


class CheckResult(Output):
    """``gpuplan check``: every deployment of a plan file against its GPUs."""

    file: str | None = Field(default=None, description="the plan file as given (null for a dict)")
    passed: bool = Field(description="every deployment passed (exit code 0; else 1)")
    failed: list[str] = Field(default_factory=_no_items, description="names of the deployments that failed")
    deployments: list[DeploymentCheck] = Field(description="in the plan file's order")


class PlanOption(InferenceMemory):
    """One way to deploy: a GPU type, how many, and how the model is split. Bytes are per GPU."""

    gpu: str
    count: int
    tensor_parallel: int
    pipeline_parallel: int
    nodes: int
    gpus_per_node: int
    fits: bool
    gpu_memory_bytes: int
    headroom_bytes: int
    parameters: int
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    max_model_len_that_fits: int | None = None
    expert_parallel: bool = Field(default=False, description="MoE experts spread whole over the tensor-parallel "
                                                            "GPUs (vLLM --enable-expert-parallel, SGLang --ep-size)")
    price_per_gpu_hour: float | None = Field(default=None, description="the price given for this GPU type")
    cost_per_hour: float | None = Field(default=None, description="count x price_per_gpu_hour, when priced")
    launch: list[str] = Field(default_factory=_no_items, description="commands that start this deployment")
    reason: str | None = Field(default=None, description="why it does not fit, when it does not")


class PlanResult(Output):
    """``gpuplan plan``: for each GPU type, the deployment an engineer would run, ranked (docs/gpus.md)."""

    model: str
    engine: str
    dtype: str
    kv_dtype: str
    batch: int
    seq: int
    objective: str = Field(default="deployable", description="deployable (the layouts people run) or "
                                                            "fewest-gpus (any split inside a node)")
    ranking: str = Field(default="", description="how the options are ordered, in words")
    options: list[PlanOption] = Field(description="one per GPU type, best first (see ranking)")
    best: PlanOption | None = None
    notes: list[str] = Field(default_factory=_no_items)


#: The commands whose --format json output is a stable contract, by ``gpuplan schema --output`` name: the name
#: of the model behind each.
OUTPUTS: dict[str, str] = {"estimate": "EstimateResult", "plan": "PlanResult", "check": "CheckResult",
                           "sweep": "SweepResult", "train": "TrainResult"}


def output_model(name: str) -> type[Output]:
    """The model behind a command's JSON output."""
    if name not in OUTPUTS:
        raise ValueError(f"unknown output {name!r}; one of {', '.join(OUTPUTS)}")
    return globals().get(OUTPUTS[name]) or __getattr__(OUTPUTS[name])  # type: ignore[return-value]


def output_schema(name: str) -> dict:
    """The JSON Schema of a command's --format json output."""
    return output_model(name).model_json_schema()
