"""Result models: what the library returns, what the CLI renders, what JSON output carries.

The JSON contract (docs/json.md, ``gpuplan schema``) is ``EstimateResult.model_dump()``; fields are only
ever added within a schema version. Byte fields are integers, per GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Bump the major part when a field is removed or changes meaning, the minor part when one is added.
SCHEMA_VERSION = "1.0"


class EstimateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: str = SCHEMA_VERSION
    model: str = Field(description="model id or path as resolved")
    source: str = Field(description="local | catalog | hub | hub-cache")
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
    gpus: int = 1
    parameters: int = Field(description="parameters in the checkpoint's text model (published count)")
    loaded_parameters: int = Field(description="parameters the engine loads (without MTP layers)")
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int = Field(description="weights + kv cache + activations: torch.cuda.max_memory_allocated")
    total_bytes: int = Field(description="peak_allocated + overhead: what the card must hold")
    components: dict[str, int] = Field(default_factory=dict, description="named parts of the activation peak")
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
