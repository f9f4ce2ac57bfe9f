"""KV cache bytes.

Per attention layer and token, a cache holds one key and one value vector per KV head:
``kv_heads x (head_dim + v_head_dim) x dtype bytes`` (GQA/MQA store only the KV heads: Ainslie et al.
2023, arXiv:2305.13245). MLA-aware engines (vLLM, SGLang) cache one latent of ``kv_lora_rank +
qk_rope_head_dim`` per token and layer instead (DeepSeek-V2, arXiv:2405.04434 section 2.1.2), while
transformers' DeepSeek modeling caches full per-head K and V. Sliding-window layers keep at most their
window.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpuplan.models.spec import ModelSpec


class KvLayout(BaseModel):
    """How an engine lays out the cache of one model: bytes per token per layer, and which layers slide."""

    model_config = ConfigDict(frozen=True)

    bytes_per_token_full: int
    """Bytes per token summed over the full-attention layers."""
    sliding: tuple[tuple[int, int], ...] = ()
    """(window, bytes per token summed over the layers with that window)."""

    def bytes_for(self, batch: int, tokens: int) -> int:
        total = self.bytes_per_token_full * tokens
        for window, per_token in self.sliding:
            total += per_token * min(tokens, window)
        return batch * total

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token while the sequence is shorter than every window."""
        return self.bytes_per_token_full + sum(b for _, b in self.sliding)


def per_layer_token_bytes(spec: ModelSpec, kv_dtype_bytes: int, *, mla_latent: bool,
                          kv_heads: int | None = None) -> int:
    """Bytes one token occupies in one attention layer's cache."""
    if spec.mla is not None and mla_latent:
        return spec.mla.latent_dim * kv_dtype_bytes
    heads = spec.num_key_value_heads if kv_heads is None else kv_heads
    return heads * (spec.head_dim + spec.v_head_dim) * kv_dtype_bytes


def kv_layout(spec: ModelSpec, kv_dtype_bytes: int, *, mla_latent: bool, kv_heads: int | None = None,
              window_tokens=lambda window: window) -> KvLayout:
    """The cache layout of ``spec``. ``window_tokens`` maps a sliding window to the tokens an engine
    keeps for it (engines differ by one or by a block); ``kv_heads`` overrides the KV heads per GPU."""
    per_layer = per_layer_token_bytes(spec, kv_dtype_bytes, mla_latent=mla_latent, kv_heads=kv_heads)
    full = 0
    sliding: dict[int, int] = {}
    for window in spec.layer_windows:
        if window is None:
            full += per_layer
        else:
            kept = window_tokens(window)
            sliding[kept] = sliding.get(kept, 0) + per_layer
    return KvLayout(bytes_per_token_full=full, sliding=tuple(sorted(sliding.items())))
