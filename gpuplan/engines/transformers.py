"""Memory of Hugging Face transformers ``generate()``: prefill of the prompt, then greedy decoding.

The peak torch allocation (``torch.cuda.max_memory_allocated``) is the larger of two moments:

* **prefill**: weights + the prompt's KV cache + the transient tensors of one decoder layer's forward over
  the whole prompt + the hidden states that stay alive across layers + the last position's logits;
* **decode**: weights + the KV cache near its final length + the copy ``torch.cat`` makes when the
  dynamic cache grows (transformers/cache_utils.py, DynamicLayer.update) + one token's activations.

Each transient is named below with the line of transformers or torch it comes from. Sizes are for
``T = batch x prompt`` token rows; ``e`` is the compute dtype's bytes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpuplan.calc.kv_cache import kv_layout
from gpuplan.calc.precision import Precision
from gpuplan.calc.workload import Workload
from gpuplan.models.spec import ModelSpec

AttnImpl = Literal["sdpa", "eager", "flash_attention_2"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")

FP32_BYTES = 4
INT64_BYTES = 8


class TransformersMemory(BaseModel):
    """Byte components of one generate() call, per GPU."""

    model_config = ConfigDict(frozen=True)

    weights_bytes: int
    kv_cache_bytes: int
    prefill_peak_bytes: int
    decode_peak_bytes: int
    peak_allocated_bytes: int
    activation_bytes: int
    components: dict[str, int]


def _sliding_kept(window: int) -> int:
    """Tokens a sliding-window layer keeps in transformers' DynamicSlidingWindowLayer: the last
    ``window - 1`` (cache_utils.py: the next token's query sees window - 1 past tokens plus itself)."""
    return window - 1


def kv_cache_layout(spec: ModelSpec, precision: Precision):
    # transformers' DeepSeek-V2/V3 attention caches full per-head K and V, not the MLA latent.
    return kv_layout(spec, precision.kv_bytes, mla_latent=False, window_tokens=_sliding_kept)


def _layer_prefill_transient(spec: ModelSpec, batch: int, prompt: int, e: int, attn: AttnImpl) -> dict[str, int]:
    """Largest temporary allocation inside one decoder layer during prefill, by sub-block."""
    t = batch * prompt
    h, heads, kv_heads = spec.hidden_size, spec.num_attention_heads, spec.num_key_value_heads
    d, dv = spec.head_dim, spec.v_head_dim
    q_bytes = t * heads * d * e
    kv_new = t * kv_heads * (d + dv) * e
    # RMSNorm/LayerNorm upcast: hidden.to(float32), then the fp32 product (modeling_llama.py LlamaRMSNorm).
    norm = 2 * t * h * FP32_BYTES
    # Rotary embedding on q and k (modeling_llama.py apply_rotary_pos_emb): q*cos, rotate_half(q) and
    # its product with sin exist together before the sum.
    rope = 3 * q_bytes
    if attn == "eager":
        # eager_attention_forward: repeat_kv expands K/V to every head, QK^T scores in the compute
        # dtype, then softmax(dtype=float32).to(dtype): scores + fp32 probabilities + cast copy.
        repeated = t * heads * (d + dv) * e if kv_heads != heads else 0
        scores = batch * heads * prompt * prompt * (2 * e + FP32_BYTES if e < FP32_BYTES else 2 * FP32_BYTES)
        attention = q_bytes + kv_new + repeated + scores
    else:
        # SDPA flash / memory-efficient kernels keep scores on-chip; output [T, heads*dv] plus the fp32
        # logsumexp per query row (torch/nn/functional.py scaled_dot_product_attention).
        attention = q_bytes + kv_new + t * heads * dv * e + batch * heads * prompt * FP32_BYTES
    if spec.ffn_gated:
        # act(gate_proj(x)) * up_proj(x): activated gate, up and their product coexist.
        width = spec.moe.expert_intermediate_size if spec.moe else spec.intermediate_size
        width = max(width, spec.intermediate_size if spec.moe is None or spec.moe.num_dense_layers else 0)
        mlp = 3 * t * width * e
    else:
        mlp = 2 * t * spec.intermediate_size * e
    return {"norm_upcast": norm, "rotary": rope, "attention": attention, "mlp": mlp}


def estimate_generate(spec: ModelSpec, workload: Workload, precision: Precision, weights_bytes: int,
                      attn: AttnImpl = "sdpa") -> TransformersMemory:
    e = precision.compute_bytes
    batch, prompt = workload.batch, workload.prompt_tokens
    layout = kv_cache_layout(spec, precision)
    kv_final = layout.bytes_for(batch, workload.seq)
    kv_prompt = layout.bytes_for(batch, prompt)
    h = spec.hidden_size
    t = batch * prompt

    transient = _layer_prefill_transient(spec, batch, prompt, e, attn)
    layer_peak = max(transient.values())
    # Residual stream: the layer input (kept as the residual) and the running hidden states.
    residual = 2 * t * h * e
    # Eager attention builds a 4-D additive causal mask [batch, 1, q, kv] in the compute dtype once per
    # forward (transformers/masking_utils.py eager_mask); SDPA without padding passes is_causal instead.
    mask = batch * prompt * prompt * e if attn == "eager" else 0
    # generate() keeps logits of the last position only (logits_to_keep=1) and copies them to fp32
    # (generation/utils.py: outputs.logits[:, -1, :].to(copy=True, dtype=torch.float32)).
    logits = batch * spec.vocab_size * (e + FP32_BYTES)
    prefill_peak = weights_bytes + kv_prompt + residual + mask + layer_peak + logits

    # Decode: the last step holds the cache at seq - 1 tokens and concatenates one layer's K (then V)
    # into a new tensor while the old one is alive.
    largest_layer_kv = 0
    if workload.new_tokens > 1:
        per_layer_full = max(1, len(spec.layer_windows))
        largest_layer_kv = kv_final // per_layer_full // 2
    decode_peak = weights_bytes + kv_final + largest_layer_kv + logits
    peak = max(prefill_peak, decode_peak)
    components = {
        **{f"prefill_{k}": v for k, v in transient.items()},
        "residual_stream": residual,
        "causal_mask": mask,
        "logits": logits,
        "kv_prompt": kv_prompt,
        "kv_growth_copy": largest_layer_kv,
    }
    return TransformersMemory(
        weights_bytes=weights_bytes,
        kv_cache_bytes=kv_final,
        prefill_peak_bytes=prefill_peak,
        decode_peak_bytes=decode_peak,
        peak_allocated_bytes=peak,
        activation_bytes=peak - weights_bytes - kv_final,
        components=components,
    )
