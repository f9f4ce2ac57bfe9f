"""Weight bytes: the sum over the model's tensor layout of each tensor's stored bytes.

Unquantized tensors take ``numel x dtype bytes``. Quantized linear layers take their packed weights plus
the scales / zeros / indices their format stores, as the loading libraries allocate them (sources beside
each formula). Embeddings, norms, biases, routers and the lm_head stay in the compute dtype unless the
scheme quantizes them.
"""

from __future__ import annotations

import math
import re

from gpuplan.calc.precision import Precision
from gpuplan.models.spec import QUANTIZABLE_ROLES, ModelSpec, QuantSpec, TensorGroup, TensorRole


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def quantized_linear_bytes(out_features: int, in_features: int, q: QuantSpec) -> int:
    """Bytes of one quantized linear weight of shape (out_features, in_features) with its metadata."""
    numel = out_features * in_features
    if q.method == "gptq":
        # auto_gptq/nn_modules/qlinear (and gptqmodel): qweight int32 [in*bits/32, out],
        # qzeros int32 [groups, out*bits/32], scales fp16 [groups, out], g_idx int32 [in].
        groups = _ceil_div(in_features, q.group_size or in_features)
        return (numel * q.bits // 8 + groups * out_features * q.bits // 8 + groups * out_features * 2
                + in_features * 4)
    if q.method == "awq":
        # autoawq/modules/linear/gemm.py WQLinear_GEMM: qweight int32 [in, out*bits/32],
        # qzeros int32 [groups, out*bits/32], scales fp16 [groups, out].
        groups = _ceil_div(in_features, q.group_size or in_features)
        return numel * q.bits // 8 + groups * out_features * q.bits // 8 + groups * out_features * 2
    if q.method == "compressed_tensors":
        # llm-compressor pack-quantized: int32-packed weights + 16-bit scales per group (or per channel).
        groups = _ceil_div(in_features, q.group_size) if q.group_size else 1
        return numel * q.bits // 8 + groups * out_features * 2
    if q.method == "bnb_4bit":
        # bitsandbytes/functional.py quantize_4bit: two 4-bit values per byte, one absmax per 64-value
        # block (fp32), or with double quantization (compress_statistics) uint8 absmax plus one fp32
        # absmax per 256 of those; the NF4 code table (16 fp32) is kept per tensor.
        blocks = _ceil_div(numel, q.group_size or 64)
        packed = _ceil_div(numel, 2)
        if q.bnb_double_quant:
            return packed + blocks + _ceil_div(blocks, 256) * 4 + 256 * 4 + 16 * 4 + 4
        return packed + blocks * 4 + 16 * 4
    if q.method == "bnb_8bit":
        # bitsandbytes Int8Params: int8 weight + SCB, one fp32 absmax per output row (LLM.int8,
        # arXiv:2208.07339); outlier columns are split off at matmul time, not stored.
        return numel + out_features * 4
    if q.method == "fp8":
        # one byte per weight plus fp32 scales: per tensor (weight_scale, vLLM Fp8LinearMethod), per output
        # channel (llm-compressor strategy=channel), or per block (DeepSeek-V3 weight_scale_inv, 128x128).
        if q.fp8_strategy == "block" and q.fp8_block:
            bo, bi = q.fp8_block
            return numel + _ceil_div(out_features, bo) * _ceil_div(in_features, bi) * 4
        if q.fp8_strategy == "channel":
            return numel + out_features * 4
        return numel + 4
    if q.method == "mxfp4":
        # OCP MX FP4 (transformers/integrations/mxfp4.py): 4-bit values packed two per byte, one uint8
        # E8M0 scale per 32 values.
        return numel // 2 + _ceil_div(numel, 32)
    raise AssertionError(f"unhandled quantization method {q.method}")  # pragma: no cover


_LAYER_INDEX = re.compile(r"\.\d+\.|\.\*\.")


def _is_skipped(name: str, q: QuantSpec) -> bool:
    for pattern in q.modules_not_converted:
        token = _LAYER_INDEX.sub(".", "." + pattern.replace("model.", "", 1) + ".").strip(".")
        if token and token in name:
            return True
    return False


def is_quantized(tensor: TensorGroup, q: QuantSpec | None) -> bool:
    if q is None:
        return False
    if tensor.role is TensorRole.LM_HEAD:
        return q.quantize_lm_head
    if tensor.role not in QUANTIZABLE_ROLES or len(tensor.shape) < 2:
        return False
    if q.method == "mxfp4" and tensor.role is not TensorRole.EXPERT_LINEAR:
        return False
    return not _is_skipped(tensor.name, q)


def tensor_bytes(tensor: TensorGroup, precision: Precision) -> int:
    """Bytes of all ``tensor.count`` copies of one tensor group under ``precision``."""
    q = precision.quant
    if is_quantized(tensor, q):
        assert q is not None
        *lead, out_f, in_f = tensor.shape
        per_matrix = quantized_linear_bytes(out_f, in_f, q)
        return per_matrix * math.prod(lead) * tensor.count
    return tensor.total_numel * precision.compute_bytes


# Sums already taken, by model object: one model is estimated many times (sweeps, plans, the library in a
# loop). Each entry keeps its spec alive, so the id in its key cannot be reused by another object meanwhile.
_SUMS: dict[tuple, tuple[ModelSpec, int]] = {}
_SUMS_KEPT = 256


def weights_bytes(spec: ModelSpec, precision: Precision, *, loaded_only: bool = True) -> int:
    """Bytes of every weight the engine loads (``loaded_only``) or that the checkpoint stores."""
    key = (id(spec), precision, loaded_only)
    hit = _SUMS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    total = sum(tensor_bytes(t, precision) for t in spec.tensors if t.loaded or not loaded_only)
    if len(_SUMS) >= _SUMS_KEPT:
        _SUMS.pop(next(iter(_SUMS)))
    _SUMS[key] = (spec, total)
    return total


# Bytes per element of each safetensors dtype (safetensors/src/tensor.rs, Dtype::size / bitsize).
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
}


def checkpoint_bytes(parameters_by_dtype: dict[str, int]) -> int | None:
    """Stored bytes of a checkpoint from its safetensors element counts per dtype; None when a dtype is
    unknown (the caller falls back to the tensor layout)."""
    total = 0
    for dtype, count in parameters_by_dtype.items():
        size = SAFETENSORS_DTYPE_BYTES.get(dtype.upper())
        if size is None:
            return None
        total += size * count
    return total


def unloaded_bytes(spec: ModelSpec, precision: Precision) -> int:
    """Bytes of tensors stored in the checkpoint that engines do not load (MTP layers)."""
    return sum(tensor_bytes(t, precision) for t in spec.tensors if not t.loaded)


def stored_elements(spec: ModelSpec) -> int:
    """Elements the checkpoint stores, as the Hub's safetensors total counts them: parameters plus the
    scale tensors of a pre-quantized FP8 block checkpoint (one fp32 ``weight_scale_inv`` per 128x128 block)."""
    q = spec.quantization
    extra = 0
    if q is not None and q.method == "fp8" and q.fp8_block:
        bo, bi = q.fp8_block
        for t in spec.tensors:
            if is_quantized(t, q):
                *lead, out_f, in_f = t.shape
                extra += _ceil_div(out_f, bo) * _ceil_div(in_f, bi) * math.prod(lead) * t.count
    return spec.parameters + extra
