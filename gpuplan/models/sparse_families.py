"""Decoder families built on DeepSeek-style sparse attention, and their relatives.

Each parser mirrors the module tree of the family's modeling file in transformers 5.25 (named at each
parser; tests/test_architectures.py replays what transformers 5.25 builds from each family's default config
and the cache it holds after a forward). As in ``gpuplan.models.hybrid``, every parser gives one
``LayerCache`` per decoder layer.
"""

from __future__ import annotations

from collections.abc import Callable

from gpuplan.errors import ConfigError, UnsupportedModelError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.hybrid import (
    FULL,
    SLIDING,
    Parts,
    _dense_or_sparse,
    _embed_and_head,
    _mla,
    decoder_dims,
    finish,
    gated_delta_net,
    kimi_style_moe,
    layer_types,
    mla_and_kda_caches,
    mla_attention,
)
from gpuplan.models.spec import LayerCache, MlaSpec, ModelSpec, MoeSpec, StateMixerSpec, TensorRole

R = TensorRole

INDEXED = "indexed_attention"
LINEAR = "linear_attention"


# ---- the parts these families share -------------------------------------------------------------------------


def _mla_dims(c: ConfigReader, override: dict | None = None) -> MlaSpec:
    """The MLA sizes of the config, with a layer's ``per_layer_config`` entries over them."""
    raw = {**c.raw, **(override or {})}
    r = ConfigReader(raw, label=c.label)
    return MlaSpec(kv_lora_rank=r.int("kv_lora_rank"), q_lora_rank=r.int("q_lora_rank", default=None),
                   qk_nope_head_dim=r.int("qk_nope_head_dim"), qk_rope_head_dim=r.int("qk_rope_head_dim"),
                   v_head_dim=r.int("v_head_dim"))


def _dsa_indexer(p: Parts, prefix: str, n: int, q_lora_rank: int) -> tuple[int, int]:
    """DeepSeek sparse attention's lightning indexer (modeling_deepseek_v32.py DeepseekV32Indexer): wq_b from
    the query LoRA, wk, a LayerNorm k_norm with bias, weights_proj. Returns (heads, index_head_dim)."""
    c = p.c
    heads, dim = c.int("index_n_heads"), c.int("index_head_dim")
    p.lay.linear(f"{prefix}.wq_b", heads * dim, q_lora_rank, n)
    p.lay.linear(f"{prefix}.wk", dim, p.hidden, n)
    p.lay.norm(f"{prefix}.k_norm", dim, n, bias=True)
    p.lay.linear(f"{prefix}.weights_proj", heads, p.hidden, n)
    return heads, dim


def _moe_ffn(p: Parts, sparse: list[bool], *, dense_width: int, experts_key: str = "n_routed_experts",
             shared_width: int | None = None, score_bias: bool = True) -> MoeSpec | None:
    """Dense gated MLPs on the dense layers; on the sparse ones a router (with DeepSeek-V3's
    e_score_correction_bias buffer, which the checkpoints store), fused experts and shared experts of
    ``shared_width`` (default n_shared_experts x moe_intermediate_size) under ``mlp.shared_experts``."""
    c, layers = p.c, len(sparse)
    n_moe = sum(sparse)
    p.dense_mlp("layers.mlp", dense_width, layers - n_moe)
    if not n_moe:
        return None
    experts, width = c.int(experts_key), c.int("moe_intermediate_size")
    shared_count = c.int("n_shared_experts", default=1 if shared_width else 0, minimum=0)
    shared = width * shared_count if shared_width is None else shared_width
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=score_bias)
    p.dense_mlp("layers.mlp.shared_experts", shared, n_moe if shared else 0)
    return MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                   expert_intermediate_size=width, num_shared_experts=shared_count if shared else 0,
                   shared_expert_intermediate_size=shared, num_moe_layers=n_moe, num_dense_layers=layers - n_moe)


def _hyper_connections(p: Parts, layers: int, *, per_layer: int, scales: int) -> None:
    """Hyper-connections (modeling_deepseek_v4.py DeepseekV4HyperConnection / DeepseekV4HyperHead): hc_mult
    residual streams; per layer an attention and an FFN connection, each fn [per_layer, hc_mult x hidden],
    base [per_layer] and ``scales`` scalars; the head mixes the streams with hc_fn [hc_mult, hc_mult x hidden],
    hc_base [hc_mult], hc_scale [1]. Their input norms carry no weight."""
    mult, h = p.c.int("hc_mult"), p.hidden
    for name in ("attn_hc", "ffn_hc"):
        p.lay.add(f"layers.{name}.fn", (per_layer, mult * h), R.OTHER, layers)
        p.lay.add(f"layers.{name}.base", (per_layer,), R.OTHER, layers)
        p.lay.add(f"layers.{name}.scale", (scales,), R.OTHER, layers)
    p.lay.add("hc_head.hc_fn", (mult, mult * h), R.OTHER)
    p.lay.add("hc_head.hc_base", (mult,), R.OTHER)
    p.lay.add("hc_head.hc_scale", (1,), R.OTHER)


# ---- MLA with the DeepSeek sparse-attention indexer: A.X-K2, HY-V4, dots3 ---------------------------------------


def _mla_core(p: Parts, prefix: str, n: int, mla: MlaSpec, heads: int, *, q_b: bool = True) -> None:
    """The MLA projections every family here keeps (modeling_deepseek_v3.py DeepseekV3Attention): q_a_proj and
    its norm, q_b_proj (unless the family fuses it elsewhere), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj,
    o_proj; no biases (attention_bias is False in every family read here)."""
    lay, h = p.lay, p.hidden
    if mla.q_lora_rank is None:
        raise ConfigError(f"{p.c.label}: this family's attention needs q_lora_rank")
    qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    lay.linear(f"{prefix}.q_a_proj", mla.q_lora_rank, h, n)
    lay.norm(f"{prefix}.q_a_layernorm", mla.q_lora_rank, n)
    if q_b:
        lay.linear(f"{prefix}.q_b_proj", heads * qk_dim, mla.q_lora_rank, n)
    lay.linear(f"{prefix}.kv_a_proj_with_mqa", mla.latent_dim, h, n)
    lay.norm(f"{prefix}.kv_a_layernorm", mla.kv_lora_rank, n)
    lay.linear(f"{prefix}.kv_b_proj", heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank, n)
    lay.linear(f"{prefix}.o_proj", h, heads * mla.v_head_dim, n)


def _check_attention_bias(c: ConfigReader) -> None:
    if c.bool("attention_bias", default=False):
        raise ConfigError(f"{c.label}: attention_bias is not supported for {c.str('model_type')}",
                          hint="the released configs of this family set attention_bias false")


def dsa_mla(c: ConfigReader, model_type: str) -> ModelSpec:
    """MLA decoders with DeepSeek sparse attention's indexer on ``indexed_attention`` layers:

    - axk2 (modeling_axk2.py): no q_b_proj; q_gate_proj [heads x (qk_head_dim + v_head_dim), 2 q_lora_rank] makes
      the query and an output gate; input_layernorm on every layer and post_attention_layernorm on MoE layers
      are gated RMSNorms (a norm plus a low-rank gate MLP fc1 [gated_norm_rank, h] / fc2 [h, gated_norm_rank]);
    - hy_v4 (modeling_hy_v4.py): an output gate gate_proj [heads x v_head_dim, h] and one attention-sink logit
      per head; GLM-5's ``indexer_types``: "shared" layers reuse the previous selection and have no indexer;
      hyper-connections (2 x hc_mult mixes per connection, 2 scales);
    - dots3_note_text (modeling_dots3_note.py): ``per_layer_config`` overrides the MLA sizes of single layers
      (the sliding_attention layers); every layer has k_rope_only_layernorm and a per-head gate g_proj.

    Every layer caches its latent (kv_lora_rank) as the key and the rotary key (qk_rope_head_dim) as the value,
    one head (cache_utils.py DynamicIndexedLayer / DynamicSlidingWindowLayer), plus the indexer's key
    (index_head_dim) on the layers with an indexer; sliding layers keep the last sliding_window tokens.
    """
    _check_attention_bias(c)
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers, default=[INDEXED] * layers)
    unknown = sorted(set(kinds) - {INDEXED, SLIDING, FULL})
    if unknown:
        raise ConfigError(f"{c.label}: layer_types names layer kinds {model_type} does not have: {', '.join(unknown)}")
    window = c.int("sliding_window", default=None) if SLIDING in kinds else None
    if SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    indexer_kinds = c.list("indexer_types") or ["full"] * layers
    with_indexer = [kind == INDEXED and (i >= len(indexer_kinds) or indexer_kinds[i] != "shared")
                    for i, kind in enumerate(kinds)]
    per_layer = {int(k): v for k, v in (c.raw.get("per_layer_config") or {}).items() if isinstance(v, dict)}
    base = _mla_dims(c)
    heads = c.int("num_attention_heads")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    index_heads = index_dim = 0
    for i, kind in enumerate(kinds):
        override = per_layer.get(i, {})
        mla = _mla_dims(c, override) if override else base
        n_heads = ConfigReader({**c.raw, **override}, label=c.label).int("num_attention_heads")
        _mla_attention_variant(p, model_type, mla, n_heads)
        if with_indexer[i]:
            index_heads, index_dim = _dsa_indexer(p, "layers.self_attn.indexer", 1, base.q_lora_rank or 0)
        p.attention_cache(kind, kv_heads=1, key_dim=mla.kv_lora_rank, value_dim=mla.qk_rope_head_dim,
                          window=window if kind == SLIDING else None,
                          indexer_dim=c.int("index_head_dim") if with_indexer[i] else 0)
    sparse = _dense_or_sparse(c, layers)
    _decoder_norms(p, model_type, sparse)
    moe = _moe_ffn(p, sparse, dense_width=c.int("intermediate_size"),
                   shared_width=(c.int("shared_experts_intermediate_size") * c.int("n_shared_experts")
                                 if model_type == "dots3_note_text" else None))
    if model_type == "hy_v4":
        _hyper_connections(p, layers, per_layer=2 * c.int("hc_mult"), scales=2)
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        p.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; transformers skips them, so "
                       "they are not counted")
    mla = base.model_copy(update={"index_heads": index_heads}) if index_dim else base
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads,
                  head_dim=base.qk_nope_head_dim + base.qk_rope_head_dim, v_head_dim=base.v_head_dim,
                  intermediate=c.int("intermediate_size"), tied=tied, moe=moe, mla=mla)


def _mla_attention_variant(p: Parts, model_type: str, mla: MlaSpec, heads: int) -> None:
    """One layer's attention projections, each family's additions to MLA (see ``dsa_mla``)."""
    prefix, h, lay = "layers.self_attn", p.hidden, p.lay
    if model_type == "axk2":
        _mla_core(p, prefix, 1, mla, heads, q_b=False)
        qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        lay.linear(f"{prefix}.q_gate_proj", heads * (qk_dim + mla.v_head_dim), 2 * (mla.q_lora_rank or 0), 1)
        return
    _mla_core(p, prefix, 1, mla, heads)
    if model_type == "hy_v4":
        lay.linear(f"{prefix}.gate_proj", heads * mla.v_head_dim, h, 1)
        lay.add(f"{prefix}.sinks", (heads,), R.OTHER, 1)
    elif model_type == "dots3_note_text":
        lay.norm(f"{prefix}.k_rope_only_layernorm", mla.qk_rope_head_dim, 1)
        lay.linear(f"{prefix}.g_proj", heads, h, 1)


def _decoder_norms(p: Parts, model_type: str, sparse: list[bool]) -> None:
    """input_layernorm and post_attention_layernorm; A.X-K2 gates the first on every layer and the second on
    MoE layers (modeling_axk2.py AXK2GatedRMSNorm: norm.weight, mlp.fc1 [rank, h], mlp.fc2 [h, rank])."""
    layers, h = len(sparse), p.hidden
    p.lay.norm("layers.norms", h, 2 * layers)
    if model_type == "axk2":
        rank, gated = p.c.int("gated_norm_rank"), layers + sum(sparse)
        p.lay.linear("layers.gated_norm.mlp.fc1", rank, h, gated)
        p.lay.linear("layers.gated_norm.mlp.fc2", h, rank, gated)


# ---- Kolibri 1 and 1.1 ------------------------------------------------------------------------------------------


def kolibri(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_kolibri1.py: Exaone-4 attention (q/k/v/o, per-head q_norm / k_norm) on sliding and full layers,
    four RMSNorms per layer (input, post_attention, post_self_attn, post_mlp), an MoE on every layer (router
    with the e_score_correction_bias buffer, fused experts, shared_experts of shared_expert_intermediate_size).

    modeling_kolibri1_1.py adds ``indexed_attention`` layers whose indexer has no weights (it scores with the
    layer's own queries and keys), dense MLPs of mlp_only_intermediate_size on ``mlp_only_layers``, and
    ``kv_source_layers``: a layer that reads another layer's keys and values has no k_proj / v_proj / k_norm
    and caches nothing (cache_utils.py: kv_sharing_modes "reuse" -> DummyLayer)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers, default=[FULL] * layers)
    unknown = sorted(set(kinds) - {FULL, SLIDING, INDEXED})
    if unknown:
        raise ConfigError(f"{c.label}: layer_types names layer kinds {model_type} does not have: {', '.join(unknown)}")
    window = c.int("sliding_window", default=None) if SLIDING in kinds else None
    if SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    sources = c.list("kv_source_layers") or list(range(layers))
    if len(sources) < layers or any(not isinstance(s, int) or not 0 <= s <= i for i, s in enumerate(sources)):
        raise ConfigError(f"{c.label}: kv_source_layers must name, per layer, itself or an earlier layer")
    reuse = [sources[i] != i for i in range(layers)]
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    own, lay = layers - sum(reuse), p.lay
    lay.linear("layers.self_attn.q_proj", heads * head_dim, hidden, layers)
    lay.linear("layers.self_attn.k_proj", kv_heads * head_dim, hidden, own)
    lay.linear("layers.self_attn.v_proj", kv_heads * head_dim, hidden, own)
    lay.linear("layers.self_attn.o_proj", hidden, heads * head_dim, layers)
    lay.norm("layers.self_attn.q_norm", head_dim, layers)
    lay.norm("layers.self_attn.k_norm", head_dim, own)
    for kind, shared in zip(kinds, reuse, strict=False):
        if shared:
            p.caches.append(LayerCache(kind="none", mixer=f"{kind} (keys and values of an earlier layer)"))
        else:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
    lay.norm("layers.norms", hidden, 4 * layers)
    dense_only = set(c.list("mlp_only_layers") or []) if model_type == "kolibri1_1" else set()
    sparse = [i not in dense_only for i in range(layers)]
    dense_width = c.int("mlp_only_intermediate_size") if dense_only else 0
    moe = _moe_ffn(p, sparse, dense_width=dense_width, experts_key="num_local_experts",
                   shared_width=c.int("shared_expert_intermediate_size"))
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=dense_width or c.int("moe_intermediate_size"), tied=tied, moe=moe)


# ---- LongCat-Flash: two attention sublayers and a shortcut MoE per layer ------------------------------------------


def longcat_flash(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_longcat_flash.py: each of the num_layers decoder layers holds two MLA sublayers
    (DeepSeek-V3's MLA), two dense MLPs of ffn_hidden_size, four RMSNorms and one MoE whose router
    (classifier, bias only with router_bias) scores n_routed_experts + zero_expert_num experts: the
    zero experts return their input and have no weights. transformers counts the sublayers as layers
    (configuration_longcat_flash.py: num_hidden_layers = 2 x num_layers); each caches MLA's latent and rotary
    key, one head (a DynamicLayer per sublayer)."""
    _check_attention_bias(c)
    hidden, vocab = c.int("hidden_size"), c.int("vocab_size")
    blocks = c.int("num_layers", default=None) or c.int("num_hidden_layers") // 2
    layers = 2 * blocks
    heads = c.int("num_attention_heads")
    tied = c.bool("tie_word_embeddings", default=False)
    mla = _mla_dims(c)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    _mla_core(p, "layers.self_attn", layers, mla, heads)
    for _ in range(layers):
        p.attention_cache(FULL, kv_heads=1, key_dim=mla.kv_lora_rank, value_dim=mla.qk_rope_head_dim)
    ffn = c.int("ffn_hidden_size", "intermediate_size")
    p.dense_mlp("layers.mlps", ffn, layers)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    experts = c.int("n_routed_experts", "num_local_experts")
    zero = c.int("zero_expert_num", default=0, minimum=0)
    width = c.int("expert_ffn_hidden_size", "moe_intermediate_size")
    p.lay.linear("layers.mlp.router.classifier", experts + zero, hidden, blocks,
                 bias=c.bool("router_bias", default=False), role=R.ROUTER)
    p.lay.add("layers.mlp.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, blocks)
    p.lay.add("layers.mlp.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, blocks)
    top_k = c.int("moe_topk", "num_experts_per_tok")
    if zero:
        p.notes.append(f"each token picks {top_k} of {experts} experts and {zero} weightless zero experts: the "
                       "active parameters count the picks as real experts (an upper bound)")
    moe = MoeSpec(num_experts=experts, experts_per_token=min(top_k, experts), expert_intermediate_size=width,
                  num_moe_layers=blocks)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads,
                  head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim,
                  intermediate=ffn, tied=tied, moe=moe, mla=mla)


# ---- Solar Open: GLM-4.5's MoE on every layer ----------------------------------------------------------------------


def solar_open(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_solar_open.py: Llama attention (q/k/v/o without bias, head_dim from the config) and GLM-4.5's
    MoE (router with the e_score_correction_bias buffer, fused experts, n_shared_experts x
    moe_intermediate_size of shared experts) on every layer: the config has no intermediate_size,
    first_k_dense_replace or qk norm (configuration_solar_open.py removes them)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias, o_bias=False)
    for _ in range(layers):
        p.attention_cache(FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = _moe_ffn(p, [True] * layers, dense_width=0)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=c.int("moe_intermediate_size"), tied=tied, moe=moe)


# ---- Ergo: sliding and NoPE global attention, ReLU^2 experts with per-expert norms ---------------------------------


def ergo(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_ergo.py: a fused qkv_proj [(heads + 2 kv_heads) x head_dim, h] with head_dim = hidden / heads
    (ErgoAttention ignores a head_dim key), o_proj, per-head q_norm / k_norm; sliding_attention and
    full_attention layers (``layer_types``, else every global_attention_every_n_layers-th is global); four
    RMSNorms and two residual gates [h] per layer. Dense layers (``mlp_layer_types``, else the first
    num_dense_blocks) have a ReLU^2 MLP up_proj / down_proj of first_dense_intermediate_size; the others an
    MoE: router linear [E, h] with the e_score_correction_bias buffer, experts up_proj [E, h, I] and
    down_proj [E, I, h] (not gated) followed by a per-expert RMSNorm weight [E, h], and a shared ReLU^2
    expert of shared_intermediate_size with its RMSNorm. The lm_head is never tied (ErgoForCausalLM)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c, config_head_dim=False)
    every = c.int("global_attention_every_n_layers", default=4)
    kinds = layer_types(c, layers, default=[SLIDING if (i + 1) % every else FULL for i in range(layers)])
    if set(kinds) - {FULL, SLIDING}:
        raise ConfigError(f"{c.label}: layer_types may name only sliding_attention and full_attention")
    window = c.int("sliding_window", default=None) if SLIDING in kinds else None
    if SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied=False)
    lay = p.lay
    lay.linear("layers.self_attn.qkv_proj", (heads + 2 * kv_heads) * head_dim, hidden, layers)
    lay.linear("layers.self_attn.o_proj", hidden, heads * head_dim, layers)
    lay.norm("layers.self_attn.q_norm", head_dim, layers)
    lay.norm("layers.self_attn.k_norm", head_dim, layers)
    for kind in kinds:
        p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                          window=window if kind == SLIDING else None)
    lay.norm("layers.norms", hidden, 4 * layers)
    lay.add("layers.residual_gates.weight", (hidden,), R.OTHER, 2 * layers)
    mlp_kinds = c.list("mlp_layer_types")
    dense_blocks = c.int("num_dense_blocks", default=0, minimum=0)
    sparse = ([k == "sparse" for k in mlp_kinds[:layers]] if mlp_kinds is not None
              else [i >= dense_blocks for i in range(layers)])
    n_moe = sum(sparse)
    dense = c.int("first_dense_intermediate_size") if n_moe < layers else 0
    lay.linear("layers.mlp.up_proj", dense, hidden, layers - n_moe)
    lay.linear("layers.mlp.down_proj", hidden, dense, layers - n_moe)
    moe = None
    if n_moe:
        experts, width, shared = c.int("num_experts"), c.int("moe_intermediate_size"), \
            c.int("shared_intermediate_size")
        lay.linear("layers.mlp.gate.linear", experts, hidden, n_moe, role=R.ROUTER)
        lay.add("layers.mlp.gate.e_score_correction_bias", (experts,), R.ROUTER, n_moe)
        lay.add("layers.mlp.experts.up_proj", (experts, hidden, width), R.EXPERT_LINEAR, n_moe)
        lay.add("layers.mlp.experts.down_proj", (experts, width, hidden), R.EXPERT_LINEAR, n_moe)
        lay.add("layers.mlp.experts.post_expert_norm.weight", (experts, hidden), R.NORM, n_moe)
        lay.linear("layers.mlp.shared_experts.up_proj", shared, hidden, n_moe)
        lay.linear("layers.mlp.shared_experts.down_proj", hidden, shared, n_moe)
        lay.norm("layers.mlp.shared_experts.norm", hidden, n_moe)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=1, shared_expert_intermediate_size=shared,
                      num_moe_layers=n_moe, num_dense_layers=layers - n_moe)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=dense or c.int("moe_intermediate_size"), tied=False, moe=moe, act="relu2",
                  gated_ffn=False)


# ---- Lara mini: gated DeltaNet, sliding and NoPE full attention, MoE everywhere -------------------------------------


def lara_mini(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_lara_mini.py: ``layer_types`` of linear_attention (Qwen3.5's gated DeltaNet: in_proj_qkv,
    in_proj_z, in_proj_a, in_proj_b, a depthwise conv over q, k and v, dt_bias, A_log, a gated RMSNorm of the
    value head width, out_proj; the same sizes as Qwen3-Next's fused in_proj_qkvz / in_proj_ba), and
    sliding_attention / full_attention layers of Qwen3 attention (per-head q_norm / k_norm, not gated). Every
    layer's FFN is an MoE (router without bias, fused experts) plus an ungated shared_expert of
    shared_expert_intermediate_size (modeling_flint.py FlintSparseMoeBlock); the config has no
    intermediate_size."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=True)
    kinds = layer_types(c, layers)
    if set(kinds) - {FULL, SLIDING, LINEAR}:
        raise ConfigError(f"{c.label}: layer_types may name only linear_attention, sliding_attention and "
                          "full_attention")
    window = c.int("sliding_window", default=None) if SLIDING in kinds else None
    if SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    n_linear = kinds.count(LINEAR)
    recurrent, conv = gated_delta_net(p, "layers.linear_attn", n_linear)
    p.gqa("layers.self_attn", layers - n_linear, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False), qk_norm="head")
    for kind in kinds:
        if kind == LINEAR:
            p.state_cache(kind, recurrent=recurrent, conv=conv)
        else:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
    experts, width = c.int("num_experts"), c.int("moe_intermediate_size")
    p.experts("layers.mlp", layers, experts=experts, width=width)
    p.dense_mlp("layers.mlp.shared_expert", shared, layers if shared else 0)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"), expert_intermediate_size=width,
                  num_shared_experts=1 if shared else 0, shared_expert_intermediate_size=shared, num_moe_layers=layers)
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=width, tied=tied, moe=moe)
    mixer = StateMixerSpec(kind="gated_delta_net", heads=c.int("linear_num_value_heads"),
                           key_heads=c.int("linear_num_key_heads"), key_dim=c.int("linear_key_head_dim"),
                           value_dim=c.int("linear_value_head_dim"))
    return spec.model_copy(update={"state_mixer": mixer if n_linear else None})


# ---- Dory: nGPT blocks, a recurrent middle section run in loops ---------------------------------------------------


def dory(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_dory.py: nGPT-style layers without norm weights (DoryL2Norm), each an Afmoe attention (q/k/v/o,
    an output gate gate_proj [heads x head_dim, h], per-channel sqk and s_gate [heads x head_dim]) and a gated
    MLP with suv_gate / suv_up [intermediate_size], mixed into the residual by lambda_1 / lambda_2 [h]; the
    lm_head has a logit_scale [vocab]. Released configs list each layer as an attention block and an "mlp"
    block and double the layer counts (configuration_dory.py __post_init__ halves them). The
    n_recurrent_layers after the n_input_layers run n_recurrent_loops times; with recurrent_kv_cache_mode
    "per_loop" each loop caches its own keys and values (DoryModel.forward appends a copy of those cache
    layers per extra loop), so such a layer is given the K/V heads of all its loops; "last_loop" caches one."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    n_input = c.int("n_input_layers", default=8, minimum=0)
    n_output = c.int("n_output_layers", default=8, minimum=0)
    kinds = c.list("layer_types")
    recurrent = c.int("n_recurrent_layers", default=None, minimum=0)
    if kinds is not None and "mlp" in kinds:
        kinds, layers, n_input, n_output = kinds[::2], layers // 2, n_input // 2, n_output // 2
        recurrent = None if recurrent is None else recurrent // 2
    halved = ConfigReader({**c.raw, "layer_types": kinds}, label=c.label)
    kinds = layer_types(halved, layers, default=[FULL if (i + 1) % 4 == 0 else SLIDING for i in range(layers)])
    recurrent = layers - n_input - n_output if recurrent is None else recurrent
    if n_input + recurrent + n_output != layers or recurrent < 0:
        raise ConfigError(f"{c.label}: n_input_layers + n_recurrent_layers + n_output_layers must equal "
                          "num_hidden_layers")
    window = c.int("sliding_window", default=1024)  # configuration_dory.py default
    loops = c.int("n_recurrent_loops", default=2)
    copies = loops if c.str("recurrent_kv_cache_mode", default="per_loop") == "per_loop" else 1
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    lay.add("lm_head.logit_scale", (vocab,), R.OTHER)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    lay.linear("layers.self_attn.gate_proj", heads * head_dim, hidden, layers)
    lay.add("layers.self_attn.sqk", (heads * head_dim,), R.OTHER, layers)
    lay.add("layers.self_attn.s_gate", (heads * head_dim,), R.OTHER, layers)
    for i, kind in enumerate(kinds):
        if kind not in (FULL, SLIDING):
            raise ConfigError(f"{c.label}: layer type {kind!r} is not one of Dory's (full / sliding_attention)")
        n = copies if n_input <= i < n_input + recurrent else 1
        p.attention_cache(kind if n == 1 else f"{kind} x {n} loops", kv_heads=kv_heads * n, key_dim=head_dim,
                          value_dim=head_dim, window=window if kind == SLIDING else None)
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers, bias=c.bool("mlp_bias", default=False))
    lay.add("layers.mlp.suv_gate", (intermediate,), R.OTHER, layers)
    lay.add("layers.mlp.suv_up", (intermediate,), R.OTHER, layers)
    lay.add("layers.lambda_1", (hidden,), R.OTHER, layers)
    lay.add("layers.lambda_2", (hidden,), R.OTHER, layers)
    if copies > 1:
        p.notes.append(f"the {recurrent} recurrent layers run {loops} times and cache keys and values for each run")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


# ---- Doge: dynamic-mask attention ---------------------------------------------------------------------------------


def doge(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_doge.py: q/k/v/o (attention_bias on all four), per-head q_norm / k_norm, the dynamic mask's A
    [kv_heads] and dt_proj [kv_heads, kv_heads x head_dim]; input_residual and post_attention_residual [h]
    beside the two RMSNorms; a gated MLP. Every layer caches full keys and values, or a sliding window of
    sliding_window tokens when set (DynamicCache infers sliding layers from it; keep_window_size only masks).
    The cross-domain MoE (is_moe: experts stored as embeddings) is not modelled."""
    if c.bool("is_moe", default=False):
        raise UnsupportedModelError(f"{c.label}: Doge's cross-domain MoE (is_moe true) is not supported",
                                    hint="gpuplan models the dense Doge layout (is_moe false)")
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    window = c.int("sliding_window", default=None)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias, qk_norm="head")
    p.lay.add("layers.self_attn.A", (kv_heads,), R.OTHER, layers)
    p.lay.linear("layers.self_attn.dt_proj", kv_heads, kv_heads * head_dim, layers, bias=bias)
    for _ in range(layers):
        p.attention_cache(SLIDING if window else FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                          window=window)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    p.lay.add("layers.residuals", (hidden,), R.OTHER, 2 * layers)
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers, bias=c.bool("mlp_bias", default=False))
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


# ---- HRM-Text: two stacks run in nested cycles ------------------------------------------------------------------


def hrm_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_hrm_text.py: a high-level and a low-level stack (H_module, L_module) of num_layers_per_stack
    layers each, run H_cycles x (L_cycles + 1) times; every run of a layer has its own cache slot
    (configuration_hrm_text.py: num_hidden_layers = num_layers_per_stack x H_cycles x (L_cycles + 1), read as the
    per-stack count when num_layers_per_stack is absent). A layer: multi-head attention (k/v as wide as the
    queries whatever num_key_value_heads says) with a sigmoid output gate gate_proj, a gated MLP, RMSNorms
    without weights; z_L_init [h] starts the low-level state."""
    hidden, vocab, heads = c.int("hidden_size"), c.int("vocab_size"), c.int("num_attention_heads")
    head_dim = c.int("head_dim", default=hidden // heads)
    h_cycles, l_cycles = c.int("H_cycles", default=2), c.int("L_cycles", default=3)
    per_stack = c.int("num_layers_per_stack", default=None)
    slots = c.int("num_hidden_layers")
    if per_stack is None:
        per_stack, slots = slots, slots * h_cycles * (l_cycles + 1)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.lay.add("z_L_init", (hidden,), R.OTHER)
    intermediate = c.int("intermediate_size")
    for stack in ("H_module", "L_module"):
        p.gqa(f"{stack}.layers.self_attn", per_stack, heads=heads, kv_heads=heads, head_dim=head_dim, bias=bias)
        p.lay.linear(f"{stack}.layers.self_attn.gate_proj", heads * head_dim, hidden, per_stack, bias=bias)
        p.dense_mlp(f"{stack}.layers.mlp", intermediate, per_stack, bias=c.bool("mlp_bias", default=False))
    for _ in range(slots):
        p.attention_cache(FULL, kv_heads=heads, key_dim=head_dim, value_dim=head_dim)
    p.notes.append(f"{2 * per_stack} layers run {slots} times per token ({h_cycles} high-level cycles of "
                   f"{l_cycles} low-level runs and one high-level run), each run with its own keys and values")
    return finish(p, model_type, layers=slots, vocab=vocab, heads=heads, kv_heads=heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


# ---- Bailing hybrid (Ling 3): Kimi-style delta attention and gated MLA ----------------------------------------------


def bailing_hybrid(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_bailing_hybrid.py: ``layer_types`` of linear_attention (BailingHybridDeltaAttention, GLM-5.3's KDA:
    q/k/v_proj to linear_num_heads x linear_head_dim, a depthwise conv over q, k and v without bias of
    linear_conv_kernel_dim taps, the forget gate f_proj / dt_bias [heads x d] / A_log [heads], b_proj [heads, h],
    an output gate g_proj [heads x d, h], a gated RMSNorm o_norm of d, o_proj) and full_attention (DeepSeek-V3
    MLA with a per-head output gate g_proj [heads, h]). Dense MLPs on the first layers (``mlp_layer_types`` or
    first_k_dense_replace), else DeepSeek-V3's MoE (router with the e_score_correction_bias buffer, fused experts,
    num_shared_experts x moe_intermediate_size of shared experts). A linear layer keeps [3 heads d, kernel] of
    conv state and [heads, d, d] of recurrent state per sequence (cache_utils.py LinearAttentionLayer); an MLA
    layer its latent and rotary key."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers)
    if set(kinds) - {FULL, LINEAR}:
        raise ConfigError(f"{c.label}: layer_types may name only linear_attention and full_attention")
    d, k_heads, kernel = c.int("linear_head_dim"), c.int("linear_num_heads"), c.int("linear_conv_kernel_dim")
    n_full = kinds.count(FULL)
    n_lin = layers - n_full
    mla = _mla(c)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    mla_attention(p, "layers.self_attn", n_full, mla, heads, bias=c.bool("attention_bias", default=False))
    lay, width = p.lay, k_heads * d
    lay.linear("layers.self_attn.g_proj", heads, hidden, n_full)
    for name in ("q_proj", "k_proj", "v_proj", "g_proj", "forget_gate.f_proj"):
        lay.linear(f"layers.self_attn.{name}", width, hidden, n_lin)
    lay.add("layers.self_attn.conv1d.weight", (3 * width, 1, kernel), R.OTHER, n_lin)
    lay.add("layers.self_attn.forget_gate.dt_bias", (width,), R.OTHER, n_lin)
    lay.add("layers.self_attn.forget_gate.A_log", (k_heads,), R.OTHER, n_lin)
    lay.linear("layers.self_attn.b_proj", k_heads, hidden, n_lin)
    lay.norm("layers.self_attn.o_norm", d, n_lin)
    lay.linear("layers.self_attn.o_proj", hidden, width, n_lin)
    mla_and_kda_caches(p, kinds, mla, k_heads=k_heads, head_dim=d, width=width, kernel=kernel)
    lay.norm("layers.norms", hidden, 2 * layers)
    sparse = _dense_or_sparse(c, layers)
    intermediate, moe = kimi_style_moe(p, c, sparse)
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        p.notes.append(f"{mtp} multi-token-prediction layer(s) may ship in the checkpoint; transformers builds none, "
                       "so they are not counted")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads,
                  head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim,
                  intermediate=intermediate, tied=tied, moe=moe, mla=mla)


# ---- DeepSeek-V4: sliding-window MQA with compressed sparse / heavily compressed attention ----------------------

HCA = "heavily_compressed_attention"
CSA = "compressed_sparse_attention"
# configuration_deepseek_v4.py _COMPRESS_RATIO_TO_LAYER_TYPE: the legacy per-layer compress_ratios
_V4_RATIO_KINDS = {0: SLIDING, 4: CSA, 128: HCA}


def _v4_schedule(c: ConfigReader, layers: int) -> tuple[list[str], dict[str, int], list[str]]:
    """Layer kinds, compress rate per kind and MLP kinds as DeepseekV4Config.__post_init__ resolves them:
    layer_types, else the legacy compress_ratios, else two HCA layers then CSA / HCA alternating; compress_rates,
    else the legacy compress_rate_csa / compress_rate_hca over the defaults 4 and 128; mlp_layer_types, else
    num_hash_layers (default 3) hash_moe layers then moe."""
    rates = {CSA: 4, HCA: 128}  # DeepseekV4Config.default_compress_rates
    given = c.raw.get("compress_rates")
    if isinstance(given, dict):
        rates.update({k: v for k, v in given.items() if k in rates})
    rates[CSA] = c.int("compress_rate_csa", default=rates[CSA])
    rates[HCA] = c.int("compress_rate_hca", default=rates[HCA])
    kinds = c.list("layer_types")
    ratios = c.list("compress_ratios")
    if kinds is None and ratios is not None:
        if any(r not in _V4_RATIO_KINDS for r in ratios):
            raise ConfigError(f"{c.label}: compress_ratios may hold only 0, 4 and 128", hint=f"got {ratios!r}")
        kinds = [_V4_RATIO_KINDS[r] for r in ratios]
    if kinds is None:
        kinds = [HCA] * min(layers, 2) + [CSA if i % 2 else HCA for i in range(max(layers - 2, 0))]
    kinds = layer_types(ConfigReader({"layer_types": kinds}, label=c.label), layers)
    unknown = sorted(set(kinds) - {SLIDING, CSA, HCA})
    if unknown:
        raise ConfigError(f"{c.label}: layer_types names layer kinds DeepSeek-V4 does not have: {', '.join(unknown)}")
    mlp = c.list("mlp_layer_types")
    if mlp is None:
        n_hash = c.int("num_hash_layers", default=3, minimum=0)
        mlp = ["hash_moe"] * min(layers, n_hash) + ["moe"] * max(0, layers - n_hash)
    if len(mlp) < layers or set(mlp[:layers]) - {"hash_moe", "moe"}:
        raise ConfigError(f"{c.label}: mlp_layer_types must name hash_moe or moe for each of the {layers} layers")
    return kinds, rates, list(mlp[:layers])


def _v4_compressor(p: Parts, prefix: str, n: int, *, rate: int, dim: int, overlapping: bool) -> None:
    """A compressor (modeling_deepseek_v4.py DeepseekV4HCACompressor, DeepseekV4CSACompressor, and the
    indexer's): kv_proj and gate_proj to dim (two overlapping series of dim for CSA), position_bias
    [rate, width], kv_norm [dim]."""
    width = 2 * dim if overlapping else dim
    p.lay.linear(f"{prefix}.kv_proj", width, p.hidden, n)
    p.lay.linear(f"{prefix}.gate_proj", width, p.hidden, n)
    p.lay.add(f"{prefix}.position_bias", (rate, width), R.OTHER, n)
    p.lay.norm(f"{prefix}.kv_norm", dim, n)


def deepseek_v4(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_deepseek_v4.py: shared-KV multi-query attention (q_a_proj, q_a_norm, q_b_proj; kv_proj and
    kv_norm to one head of head_dim read as key and value; a grouped output projection o_a_proj
    [o_groups x o_lora_rank, heads x head_dim / o_groups] and o_b_proj; a sink logit per head) over a sliding
    window, with, per ``layer_types``, a heavily compressed branch (HCA: one entry per 128 tokens) or a
    compressed sparse one (CSA: one entry per 4 tokens from two overlapping series, plus a lightning indexer
    with its own compressor, q_b_proj from the query LoRA and weights_proj); hyper-connections (hc_mult
    streams: per connection fn [(2 + hc_mult) hc_mult, hc_mult h], base, 3 scales); an MoE on every layer
    (a router, fused experts, shared experts), routed by a frozen token-to-expert table on hash_moe layers.

    The cache (cache_utils.py DynamicSlidingWindowLayer for sliding layers; DeepseekV4HCACache /
    DeepseekV4CSACache): the window of K = V, stored once on compressed layers (and twice, as keys and values,
    on sliding layers), the compressed entries of the compressor (and the indexer), the buffered projections
    of the tokens of the window being compressed (kv and gate), and CSA's overlap state (rate x dim for kv
    and gate of each series).
    """
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads, head_dim = c.int("num_attention_heads"), c.int("head_dim")
    kinds, rates, mlp = _v4_schedule(c, layers)
    tied = c.bool("tie_word_embeddings", default=False)
    q_rank, groups, o_rank = c.int("q_lora_rank"), c.int("o_groups"), c.int("o_lora_rank")
    if heads * head_dim % groups:
        raise ConfigError(f"{c.label}: o_groups {groups} does not divide {heads} heads x head_dim {head_dim}")
    window = c.int("sliding_window", default=128)  # DeepseekV4Config default
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    lay, prefix = p.lay, "layers.self_attn"
    lay.linear(f"{prefix}.q_a_proj", q_rank, hidden, layers)
    lay.norm(f"{prefix}.q_a_norm", q_rank, layers)
    lay.linear(f"{prefix}.q_b_proj", heads * head_dim, q_rank, layers)
    lay.linear(f"{prefix}.kv_proj", head_dim, hidden, layers)
    lay.norm(f"{prefix}.kv_norm", head_dim, layers)
    lay.linear(f"{prefix}.o_a_proj", groups * o_rank, heads * head_dim // groups, layers)
    lay.linear(f"{prefix}.o_b_proj", hidden, groups * o_rank, layers)
    lay.add(f"{prefix}.sinks", (heads,), R.OTHER, layers)
    n_csa, n_hca = kinds.count(CSA), kinds.count(HCA)
    _v4_compressor(p, f"{prefix}.compressor", n_hca, rate=rates[HCA], dim=head_dim, overlapping=False)
    _v4_compressor(p, f"{prefix}.compressor", n_csa, rate=rates[CSA], dim=head_dim, overlapping=True)
    index_heads, index_dim = c.int("index_n_heads"), c.int("index_head_dim")
    if n_csa:
        _v4_compressor(p, f"{prefix}.compressor.indexer", n_csa, rate=rates[CSA], dim=index_dim, overlapping=True)
        lay.linear(f"{prefix}.compressor.indexer.q_b_proj", index_heads * index_dim, q_rank, n_csa)
        lay.linear(f"{prefix}.compressor.indexer.scorer.weights_proj", index_heads, hidden, n_csa)
    for kind in kinds:
        if kind == SLIDING:
            p.attention_cache(kind, kv_heads=1, key_dim=head_dim, value_dim=head_dim, window=window)
            continue
        rate, csa = rates[kind], kind == CSA
        p.caches.append(LayerCache(
            kind="compressed", mixer=kind, kv_heads=1, key_dim=head_dim, window=window, compress_rate=rate,
            compressed_dim=head_dim + (index_dim if csa else 0),
            buffer_dim=2 * (2 * head_dim + 2 * index_dim) if csa else 2 * head_dim,
            overlap_elems=2 * rate * (head_dim + index_dim) if csa else 0))
    lay.norm("layers.norms", hidden, 2 * layers)
    mult = c.int("hc_mult")
    _hyper_connections(p, layers, per_layer=(2 + mult) * mult, scales=3)
    moe = _v4_moe(p, mlp)
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        p.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; transformers does not build "
                       "them, so they are not counted")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=1, head_dim=head_dim,
                  intermediate=c.int("moe_intermediate_size"), tied=tied, moe=moe)


def _v4_moe(p: Parts, mlp: list[str]) -> MoeSpec:
    """DeepSeek-V4's MoE on every layer (modeling_deepseek_v4.py DeepseekV4SparseMoeBlock): a router gate [E, h]
    (on moe layers with DeepSeek-V3's e_score_correction_bias buffer; hash_moe layers route through the
    integer buffer tid2eid [vocab, top_k], not counted as weights), fused experts, and n_shared_experts x
    moe_intermediate_size of shared experts."""
    c, layers = p.c, len(mlp)
    experts, width = c.int("n_routed_experts", "num_local_experts"), c.int("moe_intermediate_size")
    shared = c.int("n_shared_experts", default=0, minimum=0)
    n_hash = mlp.count("hash_moe")
    p.experts("layers.mlp", layers, experts=experts, width=width)
    p.lay.add("layers.mlp.gate.e_score_correction_bias", (experts,), R.ROUTER, layers - n_hash)
    p.dense_mlp("layers.mlp.shared_experts", width * shared, layers if shared else 0)
    return MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                   expert_intermediate_size=width, num_shared_experts=shared,
                   shared_expert_intermediate_size=width * shared, num_moe_layers=layers)


FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    "axk2": dsa_mla,
    "hy_v4": dsa_mla,
    "dots3_note_text": dsa_mla,
    "kolibri1": kolibri,
    "kolibri1_1": kolibri,
    "longcat_flash": longcat_flash,
    "solar_open": solar_open,
    "ergo": ergo,
    "lara_mini": lara_mini,
    "dory": dory,
    "doge": doge,
    "hrm_text": hrm_text,
    "bailing_hybrid": bailing_hybrid,
    "deepseek_v4": deepseek_v4,
}
