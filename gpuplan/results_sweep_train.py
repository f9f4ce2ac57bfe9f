"""The outputs of `gpuplan sweep` and `gpuplan train` (importable from gpuplan.results as well).

They live apart from the others so that an estimate or a plan does not define them: a pydantic model costs
its definition even when it builds its validator on first use, and leaving these four out takes about 15
million instructions off every `gpuplan estimate` and `gpuplan plan`, over 1% of either (callgrind,
CPython 3.11, pydantic 2.14).
"""

from pydantic import BaseModel, Field

from gpuplan.results_base import (
    _CONFIG,
    FitSuggestion,
    GpuFit,
    InferenceMemory,
    MemoryBreakdown,
    Output,
    _no_entries,
    _no_items,
)


class SweepGpu(BaseModel):
    """A GPU a sweep is measured against."""

    model_config = _CONFIG

    name: str
    memory_bytes: int = Field(description="memory of one GPU that a CUDA process can allocate from")


class SweepPoint(GpuFit, InferenceMemory):
    """One point of a sweep grid. Bytes are per GPU."""

    dtype: str = Field(description="weights as stored on the GPU (the requested --dtype, resolved)")
    kv_dtype: str
    batch: int = Field(description="sequences at once (serving engines: concurrent requests; llama.cpp: "
                                   "--parallel)")
    seq: int = Field(description="tokens per sequence (serving engines: max_model_len; llama.cpp: per slot)")
    kv_cache_tokens: int | None = Field(default=None, description="serving engines: tokens the KV cache holds")
    max_concurrency: float | None = Field(
        default=None, description="serving engines: requests of seq tokens that fit at once")
    warnings: list[str] = Field(default_factory=_no_items)


class SweepResult(Output):
    """``gpuplan sweep``: a grid of estimates over dtypes, GPUs, batch sizes and context lengths."""

    model: str
    model_type: str
    parameters: int
    engine: str
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    dtypes: list[str] = Field(description="weight dtypes swept, resolved")
    kv_dtypes: list[str] = Field(description="KV cache dtypes swept, resolved")
    batches: list[int]
    seqs: list[int]
    gpus: list[SweepGpu] = Field(default_factory=_no_items, description="GPUs every point is checked against")
    points: list[SweepPoint] = Field(description="one per dtype x kv_dtype x GPU x batch x seq, in that order")
    notes: list[str] = Field(default_factory=_no_items)


class TrainResult(Output, GpuFit, MemoryBreakdown):
    """``gpuplan train``: memory of one training step (forward, backward, optimizer step), per GPU.

    ``batch`` is the micro-batch per GPU; bytes are integers. docs/training.md gives every formula.
    """

    model: str = Field(description="model id or path as resolved")
    source: str
    revision: str | None = None
    commit: str | None = None
    model_type: str
    method: str = Field(description="full | lora | qlora")
    precision: str = Field(description="bf16 | fp16 | fp32 | mixed (fp32 master weights, bf16 autocast)")
    optimizer: str = Field(description="adamw | adamw-8bit | adafactor | sgd | sgd-momentum")
    lora_rank: int | None = Field(default=None, description="LoRA rank (lora, qlora)")
    lora_targets: list[str] | None = Field(
        default=None, description="adapted modules; null: every linear projection of the blocks (all-linear)")
    grad_checkpointing: bool
    batch: int = Field(description="micro-batch per GPU")
    seq: int = Field(description="tokens per sequence")
    grad_accumulation: int
    zero: int = Field(description="DeepSpeed ZeRO stage (0: none)")
    fsdp: bool = Field(description="FSDP FULL_SHARD")
    gpus: int = Field(description="data-parallel GPUs")
    offload_optimizer: bool
    prepare_kbit: bool = Field(default=False, description="QLoRA base prepared by peft's "
                                                          "prepare_model_for_kbit_training (float32 activations)")
    parameters: int = Field(description="parameters of the model")
    trainable_parameters: int = Field(description="parameters that receive gradients (LoRA: the adapters)")
    gradient_bytes: int = Field(description="gradients on this GPU")
    optimizer_bytes: int = Field(description="optimizer states on this GPU (ZeRO: with fp32 master weights)")
    step_temporary_bytes: int = Field(description="memory optimizer.step() allocates and frees again")
    forward_peak_bytes: int
    backward_peak_bytes: int
    step_peak_bytes: int
    peak_phase: str = Field(description="forward | backward | optimizer step: where the peak is")
    suggestions: list[FitSuggestion] = Field(
        default_factory=_no_items, description="when it does not fit: changes that would make it fit, each estimated")
    components: dict[str, int] = Field(default_factory=_no_entries, description="named parts of the estimate")
    notes: list[str] = Field(default_factory=_no_items)
    warnings: list[str] = Field(default_factory=_no_items)
