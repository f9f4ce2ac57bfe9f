"""The transformers releases whose generate() memory gpuplan models, and what changed between them.

Each row names the first release of a span and the rules that differ from the defaults; a rule is cited from
the source of the release that brought it (the published wheels, transformers/models/*/modeling_*.py and
transformers/cache_utils.py). Releases 5.17.0 to 5.25.0 were read; between two rows nothing that changes
generate()'s memory in gpuplan's model differs.

Read as data, never imported from transformers: the estimate path does not import it.
"""

from pydantic import BaseModel, ConfigDict

from gpuplan.engines.vllm_releases import _V, _fmt, select_release
from gpuplan.models.spec import ModelSpec

OLDEST: _V = (5, 17, 0)
NEWEST: _V = (5, 25, 0)
"""The newest release whose sources were read: the default."""
SUPPORTED = f"{_fmt(OLDEST)} to {_fmt(NEWEST)}"

# MLA families with DeepSeek sparse attention's indexer. Up to 5.17.x their attention expanded the latents to
# per-head K/V before the cache update and cached those (modeling_deepseek_v32.py 5.17.0
# DeepseekV32Attention.forward: "Sparse-attention models cache the expanded K/V, not the compressed latents";
# the same in modeling_glm_moe_dsa.py, modeling_axk2.py and modeling_hy_v4.py); from 5.18.0 they cache the
# latents, as DeepSeek-V3 always did. DeepSeek-V2/V3, GLM-4-MoE-Lite, LongCat-Flash, Mistral 4 and Youtu cache
# the latents in every release read.
DSA_MLA_FAMILIES = frozenset({"deepseek_v32", "glm_moe_dsa", "axk2", "hy_v4"})


class TransformersRelease(BaseModel):
    """The rules of one transformers release that change generate()'s memory."""

    model_config = ConfigDict(frozen=True)

    version: str
    era: str
    """The releases that share these rules."""
    dsa_expanded_cache: bool
    """Sparse-attention MLA layers cache K/V expanded per head ([b, heads, t, qk_nope + qk_rope] keys and
    [b, heads, t, v_head_dim] values) instead of the latents ([b, 1, t, kv_lora_rank], [b, 1, t, qk_rope])."""


# Other differences between 5.17.0 and 5.25.0 that change memory, not modelled by release: from 5.24.0 the MoE
# router's gate.weight loads in float32 (_keep_in_fp32_modules_strict in modeling_deepseek_v3.py,
# modeling_deepseek_v32.py, modeling_glm_moe_dsa.py, modeling_nemotron_h.py): experts x hidden x 2 bytes more a
# MoE layer, under 0.1% of any model's weights.
_ROWS: list[tuple[_V, dict]] = [
    ((5, 17, 0), {"dsa_expanded_cache": True}),
    ((5, 18, 0), {"dsa_expanded_cache": False}),
]


def transformers_release(version: str | None = None) -> TransformersRelease:
    """The rules of transformers ``version`` (default: the newest release read). InputError outside the range."""
    parsed, era, row = select_release("transformers", version, _ROWS, OLDEST, NEWEST)
    return TransformersRelease(version=parsed, era=era, **row)


def as_cached_by(spec: ModelSpec, release: TransformersRelease) -> ModelSpec:
    """``spec`` with each layer's cache as ``release`` keeps it: up to 5.17.x the attention layers of the sparse-
    attention MLA families hold K/V expanded to every head (keys of qk_nope + qk_rope, values of v_head_dim, what
    ``expand_kv`` returns) besides the indexer's keys (cache_utils.py 5.17.0 DynamicIndexedLayer); the spec
    describes the latents later releases keep."""
    if not release.dsa_expanded_cache or spec.model_type not in DSA_MLA_FAMILIES or spec.mla is None:
        return spec
    expanded = {"kv_heads": spec.num_attention_heads, "key_dim": spec.mla.qk_nope_head_dim + spec.mla.qk_rope_head_dim,
                "value_dim": spec.mla.v_head_dim}
    caches = tuple(lc.model_copy(update=expanded) if lc.kind == "attention" else lc for lc in spec.layer_caches)
    return spec.model_copy(update={"layer_caches": caches})
