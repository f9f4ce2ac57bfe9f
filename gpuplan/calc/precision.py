"""Precisions: what a user asks for (--dtype, --kv-dtype) resolved against what the checkpoint holds."""


from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec, QuantSpec

FloatDtype = Literal["fp32", "fp16", "bf16"]
KvDtype = Literal["fp32", "fp16", "bf16", "fp8"]

# Bytes per element of each storage type (IEEE 754 / OCP FP8 E4M3 and E5M2 are one byte).
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

_ALIASES = {
    "float32": "fp32", "fp32": "fp32", "f32": "fp32", "float": "fp32",
    "float16": "fp16", "fp16": "fp16", "f16": "fp16", "half": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
    "fp8": "fp8", "float8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8",
    "int8": "int8", "llm.int8": "int8", "8bit": "int8",
    "int4": "int4", "4bit": "int4", "gptq": "int4", "awq": "int4",
    "nf4": "nf4", "bnb4": "nf4", "qlora": "nf4",
    "auto": "auto",
}
WEIGHT_DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8", "int8", "int4", "nf4")
KV_DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8")

# Group size of 4-bit GPTQ/AWQ checkpoints as published by their authors and by AutoGPTQ/AutoAWQ's
# defaults (quantize_config.json group_size=128; AutoAWQ q_group_size=128).
INT4_DEFAULT_GROUP_SIZE = 128


def normalize_dtype(name: str, *, allowed: tuple[str, ...] = WEIGHT_DTYPES, what: str = "--dtype") -> str:
    key = name.strip().lower().replace("torch.", "")
    norm = _ALIASES.get(key)
    if norm is None or norm not in allowed:
        raise InputError(f"unknown {what} {name!r}", hint=f"use one of: {', '.join(allowed)}")
    return norm


def engine_kv_dtype(precision: "Precision", kv_cache_dtype: str | None) -> KvDtype:
    """The KV-cache dtype a serving engine stores: its --kv-cache-dtype, where ``auto`` (or unset)
    keeps the precision's own KV dtype, as vLLM's and SGLang's ``--kv-cache-dtype auto`` do."""
    if kv_cache_dtype is None:
        return precision.kv_dtype
    requested = normalize_dtype(kv_cache_dtype, allowed=KV_DTYPES, what="kv_cache_dtype")
    return precision.kv_dtype if requested == "auto" else requested  # type: ignore[return-value]


class Precision(BaseModel):
    """Resolved storage of weights, KV cache and activations."""

    model_config = ConfigDict(frozen=True)

    weights: str
    """The --dtype as resolved: fp32, fp16, bf16, or a quantized format (fp8, int8, int4, nf4, or the
    checkpoint's scheme name such as gptq-int4)."""
    compute_dtype: FloatDtype
    """Dtype of activations and of unquantized tensors (embeddings, norms, lm_head)."""
    kv_dtype: KvDtype
    quant: QuantSpec | None = None

    @property
    def compute_bytes(self) -> int:
        return DTYPE_BYTES[self.compute_dtype]

    @property
    def kv_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]


def _native_float(spec: ModelSpec) -> FloatDtype | None:
    native = (spec.native_dtype or "").replace("torch.", "")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(native)  # type: ignore[return-value]


def resolve_precision(spec: ModelSpec, dtype: str = "auto", kv_dtype: str = "auto") -> Precision:
    """Resolve --dtype / --kv-dtype for a model.

    ``auto`` means what transformers >= 5 loads by default (``dtype="auto"``): the checkpoint's own
    dtype and quantization. A quantized --dtype on an unquantized checkpoint means quantizing it on load:
    int4 as group-128 GPTQ/AWQ, nf4 / int8 as bitsandbytes, fp8 as per-channel FP8 (vLLM/llm-compressor's
    dynamic FP8). Compute stays in the native 16-bit dtype (bf16 when the checkpoint is fp32).
    """
    weights = normalize_dtype(dtype)
    native = _native_float(spec)
    sixteen: FloatDtype = native if native in ("fp16", "bf16") else "bf16"
    quant: QuantSpec | None = None
    if weights == "auto":
        if spec.quantization is not None:
            quant = spec.quantization
            compute: FloatDtype = "fp16" if quant.method in ("gptq", "awq") and native != "bf16" else sixteen
            weights = _scheme_label(quant)
        else:
            compute = native or "fp32"
            weights = compute
    elif weights in ("fp32", "fp16", "bf16"):
        compute = weights  # type: ignore[assignment]
    else:
        compute = sixteen
        if spec.quantization is not None and _scheme_label(spec.quantization).startswith(weights):
            quant = spec.quantization
        else:
            quant = _requested_quant(weights)
        weights = _scheme_label(quant)
    kv = normalize_dtype(kv_dtype, allowed=KV_DTYPES, what="--kv-dtype")
    kv_resolved: KvDtype = compute if kv == "auto" else kv  # type: ignore[assignment]
    return Precision(weights=weights, compute_dtype=compute, kv_dtype=kv_resolved, quant=quant)


def _requested_quant(weights: str) -> QuantSpec:
    if weights == "int4":
        return QuantSpec(method="gptq", bits=4, group_size=INT4_DEFAULT_GROUP_SIZE, source="requested")
    if weights == "nf4":
        # transformers' BitsAndBytesConfig defaults: bnb_4bit_quant_type="fp4" is the class default, but
        # every QLoRA recipe sets nf4 with double quantization; the byte count is the same for fp4/nf4.
        return QuantSpec(method="bnb_4bit", bits=4, group_size=64, bnb_double_quant=True, source="requested")
    if weights == "int8":
        return QuantSpec(method="bnb_8bit", bits=8, source="requested")
    if weights == "fp8":
        return QuantSpec(method="fp8", bits=8, fp8_strategy="channel", source="requested")
    raise InputError(f"unknown --dtype {weights!r}")  # pragma: no cover - normalize_dtype guards this


def _scheme_label(quant: QuantSpec) -> str:
    return {
        "gptq": "int4-gptq" if quant.bits == 4 else f"int{quant.bits}-gptq",
        "awq": f"int{quant.bits}-awq",
        "bnb_4bit": "nf4",
        "bnb_8bit": "int8",
        "fp8": "fp8",
        "mxfp4": "mxfp4",
        "compressed_tensors": f"int{quant.bits}",
    }[quant.method]
