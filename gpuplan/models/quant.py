"""Read a checkpoint's ``quantization_config`` into a QuantSpec."""


from typing import Any

from gpuplan.errors import ConfigError, UnsupportedModelError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.spec import QuantSpec


def parse_quantization_config(c: ConfigReader) -> QuantSpec | None:
    q = c.raw.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ConfigError(f"{c.label}: quantization_config must be an object")
    method = str(q.get("quant_method", "")).lower()
    skip = tuple(q.get("modules_to_not_convert") or q.get("llm_int8_skip_modules") or ())
    if method == "gptq":
        # AutoGPTQ / GPTQModel config: bits, group_size (-1 = one group per column), desc_act
        return QuantSpec(method="gptq", bits=_bits(q, c), group_size=_group(q),
                         quantize_lm_head=bool(q.get("lm_head", False)))
    if method == "awq":
        return QuantSpec(method="awq", bits=_bits(q, c, key=("bits", "w_bit")),
                         group_size=_group(q, key=("group_size", "q_group_size")), modules_not_converted=skip)
    if method == "bitsandbytes":
        if q.get("load_in_4bit") or str(q.get("_load_in_4bit", "")).lower() == "true":
            return QuantSpec(method="bnb_4bit", bits=4, group_size=64,
                             bnb_double_quant=bool(q.get("bnb_4bit_use_double_quant", False)),
                             modules_not_converted=skip)
        return QuantSpec(method="bnb_8bit", bits=8, modules_not_converted=skip)
    if method == "fp8":
        block = q.get("weight_block_size")
        if block is not None:
            return QuantSpec(method="fp8", bits=8, fp8_block=(int(block[0]), int(block[1])),
                             fp8_strategy="block", modules_not_converted=skip)
        return QuantSpec(method="fp8", bits=8, fp8_strategy="tensor", modules_not_converted=skip)
    if method == "mxfp4":
        # gpt-oss: only the MoE experts are MXFP4 (modules_to_not_convert lists attention, router,
        # embeddings and lm_head); transformers/integrations/mxfp4.py
        return QuantSpec(method="mxfp4", bits=4, group_size=32, modules_not_converted=skip)
    if method in ("compressed-tensors", "compressed_tensors"):
        return _compressed_tensors(q, c)
    raise UnsupportedModelError(
        f"{c.label}: quantization method {method or '(none)'!r} is not supported",
        hint="pass --dtype to estimate the model at a precision gpuplan knows",
    )


def _bits(q: dict[str, Any], c: ConfigReader, key: tuple[str, ...] = ("bits",)) -> int:
    for k in key:
        if isinstance(q.get(k), int) and q[k] in (2, 3, 4, 8):
            return int(q[k])
    raise ConfigError(f"{c.label}: quantization_config needs bits of 2, 3, 4 or 8")


def _group(q: dict[str, Any], key: tuple[str, ...] = ("group_size",)) -> int | None:
    for k in key:
        value = q.get(k)
        if isinstance(value, int):
            return None if value <= 0 else value
    return 128


def _compressed_tensors(q: dict[str, Any], c: ConfigReader) -> QuantSpec:
    """llm-compressor's format (RedHatAI / neuralmagic checkpoints): config_groups -> weights scheme."""
    groups = q.get("config_groups") or {}
    weights = None
    for group in groups.values():
        if isinstance(group, dict) and isinstance(group.get("weights"), dict):
            weights = group["weights"]
            break
    if weights is None:
        raise UnsupportedModelError(f"{c.label}: compressed-tensors config without a weights scheme")
    bits = int(weights.get("num_bits", 8))
    kind = weights.get("type", "int")
    strategy = weights.get("strategy", "tensor")
    skip = tuple(q.get("ignore") or ())
    if kind == "float" and bits == 8:
        block = weights.get("block_structure")
        if strategy == "block" and block:
            return QuantSpec(method="fp8", bits=8, fp8_block=(int(block[0]), int(block[1])), fp8_strategy="block",
                             modules_not_converted=skip)
        return QuantSpec(method="fp8", bits=8, fp8_strategy="channel" if strategy == "channel" else "tensor",
                         modules_not_converted=skip)
    group = weights.get("group_size") if strategy == "group" else None
    return QuantSpec(method="compressed_tensors", bits=bits, group_size=group, modules_not_converted=skip)
