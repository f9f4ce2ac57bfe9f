"""What each endpoint accepts: one pydantic model per endpoint, read from query parameters (GET) or a JSON
body (POST). Field names are the library facade's keyword names, so a request passes through unchanged and
a page's URL reads like a call to gpuplan.estimate()."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

_FORBID = ConfigDict(extra="forbid", frozen=True)


def _token_count(value: Any) -> Any:
    """'4k' -> 4096, as the CLI reads --seq; numbers pass through for pydantic to check."""
    if isinstance(value, str) and value.strip():
        from gpuplan.errors import InputError
        from gpuplan.units import parse_token_count

        try:
            return parse_token_count(value)
        except InputError as exc:  # pydantic turns a ValueError into a field error with this message
            raise ValueError(exc.message) from None
    return value


def _split_list(value: Any) -> Any:
    """GPU names from a repeated parameter (gpus=H100&gpus=L4), a comma list (H100,L4) or a JSON list."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list):
        return [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    return value


def _grid_text(value: Any) -> Any:
    """A sweep axis as the CLI's text: a JSON list [1, 8] or a repeated parameter becomes '1,8'."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return value


TokenCount = Annotated[int, BeforeValidator(_token_count), Field(ge=1)]
GridText = Annotated[str, BeforeValidator(_grid_text), Field(max_length=200)]
NameList = Annotated[list[str], BeforeValidator(_split_list)]

MODEL_FIELD = Field(description="Hugging Face id (meta-llama/Llama-2-7b-hf), bundled alias (llama-2-7b) or "
                                "id@revision. Local paths only when the server allows them.",
                    min_length=1, max_length=300)
SOURCE_FIELD = Field("auto", description="auto, catalog, hub, modelscope (local: only when the server allows "
                                         "local paths).")
REVISION_FIELD = Field(None, description="Hub branch, tag or commit.", max_length=200)


class ModelRef(BaseModel):
    model_config = _FORBID

    model: str = MODEL_FIELD
    revision: str | None = REVISION_FIELD
    source: str = SOURCE_FIELD


class _EstimateBase(ModelRef):
    """One workload, as gpuplan.estimate() takes it, with every engine option as a field."""

    dtype: str = Field("auto", description="Weights: auto, fp32, fp16, bf16, fp8, int8, int4, nf4.")
    kv_dtype: str = Field("auto", description="KV cache: auto, fp16, bf16, fp8, fp32.")
    batch: int = Field(1, ge=1, description="Sequences at once (serving engines: concurrent requests to fit).")
    seq: TokenCount | None = Field(None, description="Tokens per sequence (4096 or 4k). Default 2048; serving "
                                                     "engines: the model's context.")
    new_tokens: int = Field(0, ge=0, description="How many of the seq tokens are generated.")
    engine: str | None = Field(None, description="transformers, vllm, sglang or llama.cpp (default: transformers, "
                                                 "llama.cpp for a .gguf file).")
    gpu: str | None = Field(None, description="GPU from the catalog (/api/gpus) to check the fit against.")
    gpu_memory: str | None = Field(None, description="Memory per GPU, e.g. 79.2GiB, for a card not in the catalog.")
    tensor_parallel: int = Field(1, ge=1, description="Tensor parallel GPUs (serving engines).")
    pipeline_parallel: int = Field(1, ge=1, description="Pipeline parallel stages.")


def engine_option_fields() -> dict[str, Any]:
    """Every engine's options, from the engine registry (each engine's Options class), as request fields.

    A field left out (None) is not passed on; one given goes to the facade as a keyword, where the chosen
    engine's Options validate it (one place, one message: a vLLM option given to llama.cpp is named as such).
    The fields take any JSON value for that reason; their schema, for /docs, is the Options field's."""
    from gpuplan.engines import option_owners, options_class

    fields: dict[str, Any] = {}
    for name, engines in option_owners().items():
        options = options_class(engines[0])
        typed = {k: v for k, v in option_schema(options, name).items() if k != "default"}
        description = f"{', '.join(engines)}: {options.model_fields[name].description}"
        fields[name] = (Any, Field(None, description=description, json_schema_extra=typed))
    return fields


# What a JSON Schema says of a value; the Options fields' CLI hints (flag, short, metavar ...) are left out.
_SCHEMA_KEYS = ("type", "anyOf", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                "default")


def option_schema(options: type[BaseModel], name: str) -> dict[str, Any]:
    """The JSON Schema of one engine option, as its Options class declares it."""
    schema = options.model_json_schema()["properties"][name]
    return {k: v for k, v in schema.items() if k in _SCHEMA_KEYS}


def _with_engine_options(name: str, base: type[BaseModel]) -> Any:
    model = create_model(name, __base__=base, **engine_option_fields())
    model.__doc__ = base.__doc__
    return model


class _PlanBase(ModelRef):
    """Which GPUs, how many, how split, as gpuplan.plan() takes it, with every engine option as a field."""

    gpus: NameList | None = Field(None, description="GPU types to plan for (default: the whole catalog).")
    engine: str = Field("vllm", description="vllm, sglang, or transformers (one GPU).")
    dtype: str = "auto"
    kv_dtype: str = "auto"
    batch: int = Field(1, ge=1, description="Requests of seq tokens that must fit at once.")
    seq: TokenCount | None = Field(None, description="Context per request (default: the model's).")
    max_gpus: int = Field(512, ge=1, le=512, description="Largest deployment to consider.")
    objective: str = Field("deployable", description="deployable (tensor parallel 1/2/4/8 in a node, pipeline "
                                                     "stages across nodes) or fewest-gpus (any split in a node).")
    prices: dict[str, float] | None = Field(None, description="Price per GPU-hour by GPU name; ranks by cost.")


class _SweepBase(ModelRef):
    """A grid of estimates, as gpuplan.sweep() takes it, with every engine option as a field."""

    seq: GridText | None = Field(None, description="Context lengths: a list (2k,8k) or a doubling range (1k..128k).")
    batch: GridText = Field("1", description="Batch sizes: a list (1,8,32) or a doubling range (1..64).")
    dtype: GridText = Field("auto", description="Weight dtypes, a list.")
    kv_dtype: GridText = Field("auto", description="KV cache dtypes, a list.")
    gpu: NameList | None = Field(None, description="GPUs to check every point against.")
    engine: str | None = None
    tensor_parallel: int = Field(1, ge=1)
    pipeline_parallel: int = Field(1, ge=1)
    new_tokens: int = Field(0, ge=0)

    def sweep_keywords(self) -> dict[str, Any]:
        """Keywords for gpuplan.sweep(), lists as its own text forms take them."""
        return self.model_dump(exclude={"model", "revision", "source"}, exclude_none=True)


EstimateRequest = _with_engine_options("EstimateRequest", _EstimateBase)
PlanRequest = _with_engine_options("PlanRequest", _PlanBase)
SweepRequest = _with_engine_options("SweepRequest", _SweepBase)


class TrainRequest(ModelRef):
    method: str = Field("full", description="full, lora or qlora.")
    precision: str = Field("bf16", description="bf16, fp16, fp32 or mixed.")
    optimizer: str = Field("adamw", description="adamw, adamw-8bit, adafactor, sgd or sgd-momentum.")
    lora_rank: int | None = None
    lora_targets: str | None = Field(None, description="Comma-separated modules (q_proj,v_proj); default all "
                                                       "linear projections.", max_length=500)
    grad_checkpointing: bool = False
    batch: int = Field(1, ge=1, description="Micro-batch per GPU.")
    seq: TokenCount = 2048
    grad_accumulation: int = Field(1, ge=1)
    zero: int = Field(0, description="DeepSpeed ZeRO stage 0-3.")
    fsdp: bool = False
    gpus: int = Field(1, ge=1, description="Data-parallel GPUs.")
    offload_optimizer: bool = False
    prepare_kbit: bool = False
    gpu: str | None = None
    gpu_memory: str | None = None
    expandable_segments: bool | None = None


class CheckRequest(BaseModel):
    model_config = _FORBID

    plan: str | dict[str, Any] = Field(description="The plan file: its YAML text, or (POST) the same as a JSON "
                                                   "object. docs/ci.md describes the keys.")


class FilterRequest(BaseModel):
    model_config = _FORBID

    filter: str | None = Field(None, description="Show only entries whose name contains this text.",
                               max_length=200)
