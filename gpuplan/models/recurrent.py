"""Recurrent, hybrid and state-space decoder families whose layers do not follow one of the layouts of
hybrid.py: Zamba's shared attention blocks, ZAYA's convolutional attention, Inkling's short convolutions
beside every attention, RecurrentGemma, RWKV, xLSTM, Gemma 3n.

Each parser mirrors the module tree of the family's modeling file in transformers 5.25 (named at each
parser); tests/test_architectures.py replays what transformers 5.25 builds from each family's default config,
parameter for parameter, and, where it could be recorded, the cache it holds after a forward. Every layer
gets one ``LayerCache`` of the kinds the engines know (attention, state, hybrid, none). Where a config omits
a key, the default read is that of the family's configuration_*.py class in transformers 5.25.
"""

from __future__ import annotations

from collections.abc import Callable

from gpuplan.errors import ConfigError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.hybrid import FULL, SLIDING, Parts, finish, layer_types, mamba2
from gpuplan.models.layout import check_heads
from gpuplan.models.spec import LayerCache, ModelSpec, MoeSpec, TensorRole

R = TensorRole

HYBRID = "hybrid"
HYBRID_SLIDING = "hybrid_sliding"
LINEAR = "linear_attention"
# configuration_utils.py _LEGACY_LAYER_TYPE_REMAP (transformers 5.25): older configs name the layers so
_LEGACY_KINDS = {"mamba": LINEAR, "attention": FULL}


def _hybrid_cache(p: Parts, mixer: str, *, kv_heads: int, head_dim: int, recurrent: int, conv: int,
                  kernel: int, window: int | None = None) -> None:
    """A layer that keeps K/V per token and a fixed state beside it (cache_utils.py
    LinearAttentionAndFullAttentionLayer, LinearAttentionAndSlidingWindowAttentionLayer)."""
    p.caches.append(LayerCache(kind="hybrid", mixer=mixer, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                               window=window, recurrent_elems=recurrent, conv_elems=conv, conv_kernel=kernel,
                               recurrent_bytes=p.recurrent_bytes if recurrent else None))


# ---- Zamba, Zamba2: Mamba layers with a shared attention block --------------------------------------------


def _zamba_kinds(c: ConfigReader, layers: int, default: list[str]) -> list[str]:
    """layers_block_type (configuration_zamba*.py: attribute_map layer_types), legacy names remapped; each
    entry linear_attention (a Mamba layer) or hybrid (the shared attention block, then a Mamba layer)."""
    raw = c.list("layers_block_type", "layer_types")
    kinds = [_LEGACY_KINDS.get(k, k) for k in (raw if raw is not None else default)]
    if len(kinds) < layers or set(kinds[:layers]) - {LINEAR, HYBRID}:
        raise ConfigError(f"{c.label}: layers_block_type must name linear_attention (mamba) or hybrid for each of "
                          f"the {layers} layers", hint=f"got {raw!r}")
    return kinds[:layers]


def _zamba_shared_block(p: Parts, prefix: str, n: int, *, heads: int, kv_heads: int, head_dim: int,
                        attn_in: int, ffn: int, fused: bool, bias: bool = False) -> None:
    """The shared transformer block: attention over the concatenation of the hidden state and the
    embeddings (attention_hidden_size = 2 x hidden in), a gated MLP, input_layernorm of attention_hidden_size
    and pre_ff_layernorm of hidden."""
    lay, h = p.lay, p.hidden
    lay.linear(f"{prefix}.self_attn.q_proj", heads * head_dim, attn_in, n)
    lay.linear(f"{prefix}.self_attn.k_proj", kv_heads * head_dim, attn_in, n)
    lay.linear(f"{prefix}.self_attn.v_proj", kv_heads * head_dim, attn_in, n)
    lay.linear(f"{prefix}.self_attn.o_proj", h, heads * head_dim, n)
    if fused:
        lay.linear(f"{prefix}.feed_forward.gate_up_proj", 2 * ffn, h, n, bias=bias)
    else:
        lay.linear(f"{prefix}.feed_forward.gate_proj", ffn, h, n)
        lay.linear(f"{prefix}.feed_forward.up_proj", ffn, h, n)
    lay.linear(f"{prefix}.feed_forward.down_proj", h, ffn, n, bias=bias)
    lay.norm(f"{prefix}.input_layernorm", attn_in, n)
    lay.norm(f"{prefix}.pre_ff_layernorm", h, n)


def _zamba_mamba1(p: Parts, prefix: str, n: int) -> tuple[int, int, int]:
    """modeling_zamba.py ZambaMambaMixer: a Mamba mixer split into n_mamba_heads heads, each with its own
    x_proj, dt_proj and A_log / D ([heads, head_dim, ...] parameters). Returns (recurrent, conv, kernel)
    elements per sequence: the SSM state [heads, head_dim, d_state] and the conv window [d_inner, d_conv]."""
    c, lay, h = p.c, p.lay, p.hidden
    inner = c.int("mamba_expand") * h
    heads, d_state, d_conv = c.int("n_mamba_heads"), c.int("mamba_d_state"), c.int("mamba_d_conv")
    # configuration_zamba.py: mamba_dt_rank "auto" is math.ceil(hidden_size / 16)
    rank_raw = c.raw.get("mamba_dt_rank", "auto")
    dt_rank = -(-h // 16) if rank_raw == "auto" else c.int("mamba_dt_rank")
    if inner % heads:
        raise ConfigError(f"{c.label}: mamba_expand x hidden_size ({inner}) is not divisible by n_mamba_heads {heads}")
    head_dim = inner // heads
    bias = c.bool("mamba_proj_bias", default=False)
    lay.linear(f"{prefix}.in_proj", 2 * inner, h, n, bias=bias)
    lay.add(f"{prefix}.conv1d.weight", (inner, 1, d_conv), R.OTHER, n)
    if c.bool("mamba_conv_bias", default=True):
        lay.add(f"{prefix}.conv1d.bias", (inner,), R.BIAS, n)
    lay.add(f"{prefix}.x_proj_weight", (heads, dt_rank + 2 * d_state, head_dim), R.LINEAR, n)
    lay.add(f"{prefix}.dt_proj_weight", (heads, head_dim, dt_rank), R.LINEAR, n)
    lay.add(f"{prefix}.dt_proj_bias", (heads, head_dim), R.BIAS, n)
    lay.add(f"{prefix}.A_log", (heads, head_dim, d_state), R.OTHER, n)
    lay.add(f"{prefix}.D", (heads, head_dim), R.OTHER, n)
    lay.linear(f"{prefix}.out_proj", h, inner, n, bias=bias)
    return inner * d_state, inner * d_conv, d_conv


def zamba(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_zamba.py and modeling_zamba2.py: every layer has a Mamba mixer (zamba: multi-head Mamba;
    zamba2: Mamba-2 with a gated RMSNorm) and an input_layernorm; a ``hybrid`` layer first runs a shared
    transformer block (attention of attention_head_dim = 2 hidden / heads over 2 x hidden inputs, a gated
    MLP) and a [hidden, hidden] linear. zamba ties every shared block to the first (one set of weights);
    zamba2 keeps num_mem_blocks of them, each with a LoRA adapter [hidden -> adapter_rank -> 2 I] per hybrid
    layer it serves on its fused gate_up_proj (and on q/k/v with use_shared_attention_adapter). A Mamba layer
    keeps its SSM and conv state (cache_utils.py LinearAttentionLayer); a hybrid layer also the attention's
    K/V (LinearAttentionAndFullAttentionLayer)."""
    v2 = model_type == "zamba2"
    hidden, vocab, heads = c.int("hidden_size"), c.int("vocab_size"), c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    tied = c.bool("tie_word_embeddings", default=True)
    if v2:
        # configuration_zamba2.py __post_init__: the default layer pattern of Zamba2-2.7B (54 layers)
        default = ([LINEAR] + ([LINEAR] * 5 + [HYBRID]) * 7 + [LINEAR] * 4 + [HYBRID] + [LINEAR] * 3 + [HYBRID]
                   + [LINEAR] * 2)
        layers = len(c.list("layers_block_type", "layer_types") or default)
    else:
        layers = c.int("num_hidden_layers")
        period, offset = c.int("attn_layer_period", default=6), c.int("attn_layer_offset", default=4, minimum=0)
        # configuration_zamba.py __post_init__
        default = [LINEAR, LINEAR, HYBRID] + [HYBRID if i % period == offset else LINEAR for i in range(layers - 3)]
    kinds = _zamba_kinds(c, layers, default)
    n_hybrid = kinds.count(HYBRID)
    # configuration_zamba2.py always sets these from hidden_size; configuration_zamba.py only when unset
    attn_in = 2 * hidden if v2 else c.int("attention_hidden_size", default=2 * hidden)
    head_dim = 2 * hidden // heads if v2 else c.int("attention_head_dim", default=2 * hidden // heads)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.norm("final_layernorm", hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.lay.norm("layers.input_layernorm", hidden, layers)
    p.lay.linear("layers.linear", hidden, hidden, n_hybrid)
    # configuration_zamba2.py __post_init__: intermediate_size defaults to 4 x hidden
    ffn = c.int("intermediate_size", default=4 * hidden) if v2 else c.int("intermediate_size")
    if v2:
        inner = int(c.float("mamba_expand", default=2) * hidden)
        named = ConfigReader({**c.raw, "mamba_n_heads": c.raw.get("n_mamba_heads"),
                              "mamba_d_head": inner // c.int("n_mamba_heads"),
                              "mamba_n_groups": c.raw.get("mamba_ngroups", 1), "mamba_conv_bias": True,
                              "mamba_proj_bias": c.raw.get("add_bias_linear", False)}, label=c.label)
        p = Parts(named, hidden, lay=p.lay)
        recurrent, conv = mamba2(p, "layers.mamba", layers, inner=inner, gated_norm=True)
        kernel = p.conv_kernel
        blocks = min(c.int("num_mem_blocks", default=1), n_hybrid)
        bias = c.bool("add_bias_linear", default=False)
        _zamba_shared_block(p, "layers.shared_transformer", blocks, heads=heads, kv_heads=kv_heads,
                            head_dim=head_dim, attn_in=attn_in, ffn=ffn, fused=True, bias=bias)
        rank = c.int("adapter_rank", default=128)
        adapter = "layers.shared_transformer.feed_forward.gate_up_proj_adapter_list"
        p.lay.linear(f"{adapter}.0", rank, hidden, n_hybrid)
        p.lay.linear(f"{adapter}.1", 2 * ffn, rank, n_hybrid)
        if c.bool("use_shared_attention_adapter", default=False):
            for name in ("linear_q_adapter_list", "linear_k_adapter_list", "linear_v_adapter_list"):
                p.lay.linear(f"layers.shared_transformer.self_attn.{name}.0", rank, attn_in, n_hybrid)
                p.lay.linear(f"layers.shared_transformer.self_attn.{name}.1", attn_in, rank, n_hybrid)
    else:
        recurrent, conv, kernel = _zamba_mamba1(p, "layers.mamba", layers)
        p.conv_kernel = kernel
        _zamba_shared_block(p, "layers.shared_transf", min(1, n_hybrid), heads=heads, kv_heads=kv_heads,
                            head_dim=head_dim, attn_in=attn_in, ffn=ffn, fused=False)
    mixer = "mamba2" if v2 else "mamba"
    for kind in kinds:
        if kind == HYBRID:
            _hybrid_cache(p, f"attention+{mixer}", kv_heads=kv_heads, head_dim=head_dim, recurrent=recurrent,
                          conv=conv, kernel=kernel)
        else:
            p.state_cache(mixer, recurrent=recurrent, conv=conv, kernel=kernel)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=ffn, tied=tied, act=c.str("hidden_act", default="gelu"))


# ---- ZAYA: compressed convolutional attention with a mixture of experts ------------------------------------


def zaya(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_zaya.py: every layer is ``hybrid`` (or ``hybrid_sliding``: the same within sliding_window).
    Its attention projects q and k (q_proj, k_proj), mixes them through two causal convolutions
    (conv_qk_depthwise of cca_time0 taps, conv_qk_grouped of cca_time1 taps in heads + kv_heads groups, both
    with bias), takes half of each value head from the current token (v_proj_current) and half from the
    previous one (v_proj_delayed), scales keys per KV head (qk_norm.temp), o_proj. The MoE has a router MLP
    (down_proj to router_hidden_size with bias, router_states_scale on every layer but the first, an RMSNorm,
    fc1 and fc2 with bias, out_proj to num_experts + 1 classes: one skips) and fused experts; two
    ZayaResidualScaling blocks of four [hidden] vectors per layer, the model's input scale and bias. A layer
    keeps its K/V, the last (cca_time0 - 1) + (cca_time1 - 1) q/k columns and the delayed value of the last
    token (cache_utils.py LinearAttentionAndFullAttentionLayer)."""
    hidden, vocab = c.int("hidden_size"), c.int("vocab_size")
    layers, heads = c.int("num_hidden_layers"), c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads)
    tied = c.bool("tie_word_embeddings", default=True)
    bias = c.bool("attention_bias", default=False)
    # configuration_zaya.py: every layer hybrid unless layer_types says otherwise
    kinds = layer_types(c, layers, default=[HYBRID] * layers)
    if set(kinds) - {HYBRID, HYBRID_SLIDING}:
        raise ConfigError(f"{c.label}: layer_types may name only hybrid and hybrid_sliding", hint=f"got {kinds}")
    window = c.int("sliding_window", default=None)
    if HYBRID_SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names hybrid_sliding layers but sliding_window is unset")
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.add("input_hidden_states_scale", (hidden,), R.OTHER)
    lay.add("input_hidden_states_bias", (hidden,), R.OTHER)
    lay.norm("norm", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    if c.bool("lm_head_bias", default=False):
        lay.add("lm_head.bias", (vocab,), R.BIAS)
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    t0, t1 = c.int("cca_time0", default=2), c.int("cca_time1", default=2)
    channels = q_width + kv_width
    if kv_width % 2:
        raise ConfigError(f"{c.label}: the value heads are split in halves (current and delayed tokens), so "
                          f"num_key_value_heads x head_dim must be even, got {kv_width}")
    cca = "layers.self_attn.qkv_proj"
    lay.linear(f"{cca}.q_proj", q_width, hidden, layers, bias=bias)
    lay.linear(f"{cca}.k_proj", kv_width, hidden, layers, bias=bias)
    lay.linear(f"{cca}.v_proj_current", kv_width // 2, hidden, layers, bias=bias)
    lay.linear(f"{cca}.v_proj_delayed", kv_width // 2, hidden, layers, bias=bias)
    lay.add(f"{cca}.conv_qk_depthwise.weight", (channels, 1, t0), R.OTHER, layers)
    lay.add(f"{cca}.conv_qk_depthwise.bias", (channels,), R.BIAS, layers)
    lay.add(f"{cca}.conv_qk_grouped.weight", (channels, channels // (heads + kv_heads), t1), R.OTHER, layers)
    lay.add(f"{cca}.conv_qk_grouped.bias", (channels,), R.BIAS, layers)
    lay.add("layers.self_attn.qk_norm.temp", (kv_heads,), R.OTHER, layers)
    lay.linear("layers.self_attn.o_proj", hidden, q_width, layers, bias=bias)
    lay.norm("layers.norms", hidden, 2 * layers)
    lay.add("layers.residual_scales", (hidden,), R.OTHER, 8 * layers)
    experts, width, router = c.int("num_experts"), c.int("moe_intermediate_size"), c.int("router_hidden_size")
    lay.linear("layers.mlp.gate.down_proj", router, hidden, layers, bias=True, role=R.ROUTER)
    lay.add("layers.mlp.gate.router_states_scale", (router,), R.ROUTER, layers - 1)
    lay.norm("layers.mlp.gate.router_mlp.norm", router, layers)
    lay.linear("layers.mlp.gate.router_mlp.fc1", router, router, layers, bias=True, role=R.ROUTER)
    lay.linear("layers.mlp.gate.router_mlp.fc2", router, router, layers, bias=True, role=R.ROUTER)
    lay.linear("layers.mlp.gate.router_mlp.out_proj", experts + 1, router, layers, role=R.ROUTER)
    lay.add("layers.mlp.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, layers)
    lay.add("layers.mlp.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, layers)
    # ZayaCCAProjection: the conv cache keeps conv_kernel_size = (cca_time0 - 1) + (cca_time1 - 1) columns
    kernel = (t0 - 1) + (t1 - 1)
    for kind in kinds:
        _hybrid_cache(p, kind, kv_heads=kv_heads, head_dim=head_dim, recurrent=kv_width // 2, conv=channels * kernel,
                      kernel=kernel, window=window if kind == HYBRID_SLIDING else None)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"), expert_intermediate_size=width,
                  num_moe_layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=width, tied=tied, moe=moe)


# ---- Inkling: attention with short convolutions, MoE ------------------------------------------------------


def _inkling_kinds(c: ConfigReader, layers: int) -> tuple[list[str], list[bool]]:
    """configuration_inkling.py __post_init__: layer_types, else hybrid_sliding on local_layer_ids (default:
    every layer whose index + 1 is not a multiple of 6) and hybrid elsewhere; mlp_layer_types, else every
    layer sparse (dense before dense_mlp_idx, a checkpoint key)."""
    local = c.list("local_layer_ids")
    local_ids = set(local) if local is not None else {i for i in range(layers) if (i + 1) % 6}
    kinds = layer_types(c, layers, default=[HYBRID_SLIDING if i in local_ids else HYBRID for i in range(layers)])
    if set(kinds) - {HYBRID, HYBRID_SLIDING}:
        raise ConfigError(f"{c.label}: layer_types may name only hybrid and hybrid_sliding", hint=f"got {kinds}")
    mlp = c.list("mlp_layer_types")
    if mlp is None:
        dense = c.int("dense_mlp_idx", default=0, minimum=0)
        mlp = ["dense" if i < dense else "sparse" for i in range(layers)]
    if len(mlp) < layers or set(mlp[:layers]) - {"dense", "sparse"}:
        raise ConfigError(f"{c.label}: mlp_layer_types must say dense or sparse for each of the {layers} layers")
    return kinds, [k == "sparse" for k in mlp[:layers]]


def _inkling_widths(c: ConfigReader) -> tuple[int, int]:
    """(dense MLP width, expert width): configuration_inkling.py reads a checkpoint's dense_intermediate_size
    as the dense width, its intermediate_size then being the experts'."""
    if c.has("dense_intermediate_size"):
        return c.int("dense_intermediate_size"), c.int("intermediate_size")
    return c.int("intermediate_size"), c.int("moe_intermediate_size")


def inkling_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_inkling.py InklingTextModel: an RMS-normed embedding (embed_norm), and per layer an attention
    whose own head counts depend on the layer kind (swa_* for hybrid_sliding), with q_proj, k_proj, v_proj,
    r_proj (d_rel per head for the relative position bias), o_proj, per-head q_norm / k_norm, depthwise short
    convolutions without bias over k and v (k_sconv, v_sconv) and a bias bank rel_logits_proj.proj [d_rel,
    extent] (sliding_window_size on sliding layers, rel_extent on full ones); short convolutions over the
    attention and MLP outputs (attn_sconv, mlp_sconv); a dense gated MLP with a global_scale, or an MoE whose
    router scores n_routed_experts + n_shared_experts (weight, global_scale), fused experts and the shared
    experts as [n_shared, ...] tensors; an lm_head never tied. Multi-token-prediction layers are not loaded
    (_keys_to_ignore_on_load_unexpected). A layer keeps its K/V (the last sliding_window_size tokens on
    sliding layers) and four conv states of conv_kernel_size columns (LinearAttentionAndSlidingWindowAttentionLayer,
    number_of_conv_states 4)."""
    hidden, vocab, layers = c.int("hidden_size"), c.int("vocab_size"), c.int("num_hidden_layers")
    kinds, sparse = _inkling_kinds(c, layers)
    kernel = c.int("sconv_kernel_size", "conv_kernel_size", default=4)
    d_rel = c.int("d_rel", default=16)
    window = c.int("sliding_window_size", "sliding_window", default=512)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("embed_tokens.embed_norm", hidden, 1)
    lay.norm("norm", hidden, 1)
    lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    full = (c.int("num_attention_heads"), c.int("num_key_value_heads"), c.int("head_dim"))
    for kind in kinds:
        sliding = kind == HYBRID_SLIDING
        heads, kv_heads, head_dim = (c.int("swa_num_attention_heads", default=full[0]),
                                     c.int("swa_num_key_value_heads", default=full[1]),
                                     c.int("swa_head_dim", default=full[2])) if sliding else full
        check_heads(c, heads, kv_heads)
        p.gqa("layers.self_attn", 1, heads=heads, kv_heads=kv_heads, head_dim=head_dim, qk_norm="head")
        lay.linear("layers.self_attn.r_proj", heads * d_rel, hidden, 1)
        lay.add("layers.self_attn.kv_sconv.conv1d.weight", (kv_heads * head_dim, 1, kernel), R.OTHER, 2)
        extent = window if sliding else c.int("rel_extent", default=1024)
        lay.add("layers.self_attn.rel_logits_proj.proj", (d_rel, extent), R.OTHER, 1)
        conv = 2 * (kv_heads * head_dim + hidden) * kernel
        _hybrid_cache(p, kind, kv_heads=kv_heads, head_dim=head_dim, recurrent=0, conv=conv, kernel=kernel,
                      window=window if sliding else None)
    lay.add("layers.sconv.conv1d.weight", (hidden, 1, kernel), R.OTHER, 2 * layers)
    lay.norm("layers.norms", hidden, 2 * layers)
    dense_width, width = _inkling_widths(c)
    n_moe = sum(sparse)
    p.dense_mlp("layers.mlp", dense_width, layers - n_moe)
    lay.add("layers.mlp.global_scale", (1,), R.OTHER, layers - n_moe)
    moe = None
    if n_moe:
        experts, shared = c.int("n_routed_experts"), c.int("n_shared_experts", default=0, minimum=0)
        lay.add("layers.mlp.gate.weight", (experts + shared, hidden), R.ROUTER, n_moe)
        lay.add("layers.mlp.gate.global_scale", (1,), R.ROUTER, n_moe)
        lay.add("layers.mlp.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, n_moe)
        lay.add("layers.mlp.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, n_moe)
        if shared:
            lay.add("layers.mlp.shared_experts.gate_proj", (shared, width, hidden), R.LINEAR, n_moe)
            lay.add("layers.mlp.shared_experts.up_proj", (shared, width, hidden), R.LINEAR, n_moe)
            lay.add("layers.mlp.shared_experts.down_proj", (shared, hidden, width), R.LINEAR, n_moe)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=shared,
                      shared_expert_intermediate_size=shared * width, num_moe_layers=n_moe,
                      num_dense_layers=layers - n_moe)
    heads, kv_heads, head_dim = full
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=dense_width, tied=False, moe=moe)


# ---- Inkling 2: gated attention with dynamic convolutions and block attention residuals -------------------


def _inkling2_attention(p: Parts, kind: str, *, passes: int) -> None:
    """One attention of modeling_inkling2.py (Inkling2SlidingAttention / Inkling2FullAttention) and its cache.
    q_proj.linear with a learned [heads, head_dim] scale (q_proj.norm.scale); k_proj / v_proj.linear each
    followed by a short convolution: depthwise conv1d without bias on sliding layers, a dynamic one on full
    layers (static_weight [kernel, kv_heads x head_dim] plus weight_proj to kv_heads x kernel taps per token);
    a gated o_proj (gate_proj, linear); sink_proj (one logit per head); relative_position_bias (linear to
    heads x d_rel, norm.scale [heads, d_rel], proj [d_rel, extent]). ``passes``: the cache layers this layer
    fills per forward (a looped layer of inkling2_loop keeps one K/V and conv set per pass)."""
    c, lay, h = p.c, p.lay, p.hidden
    sliding = kind == HYBRID_SLIDING
    heads = c.int("swa_num_attention_heads" if sliding else "num_attention_heads")
    kv_heads = c.int("swa_num_key_value_heads" if sliding else "num_key_value_heads")
    head_dim = c.int("swa_head_dim" if sliding else "head_dim")
    check_heads(c, heads, kv_heads)
    kernel, d_rel = c.int("sconv_kernel_size", "conv_kernel_size", default=4), c.int("d_rel", default=16)
    window = c.int("sliding_window_size", "sliding_window")
    a = "layers.self_attn"
    lay.linear(f"{a}.q_proj.linear", heads * head_dim, h, 1)
    lay.add(f"{a}.q_proj.norm.scale", (heads, head_dim), R.NORM, 1)
    lay.linear(f"{a}.kv_proj.linear", kv_heads * head_dim, h, 2)
    if sliding:
        lay.add(f"{a}.kv_proj.sconv.conv1d.weight", (kv_heads * head_dim, 1, kernel), R.OTHER, 2)
    else:
        lay.add(f"{a}.kv_proj.sconv.static_weight", (kernel, kv_heads * head_dim), R.OTHER, 2)
        lay.linear(f"{a}.kv_proj.sconv.weight_proj", kv_heads * kernel, h, 2)
    lay.linear(f"{a}.o_proj.gate_proj", heads * head_dim, h, 1)
    lay.linear(f"{a}.o_proj.linear", h, heads * head_dim, 1)
    lay.linear(f"{a}.sink_proj", heads, h, 1)
    lay.linear(f"{a}.relative_position_bias.linear", heads * d_rel, h, 1)
    lay.add(f"{a}.relative_position_bias.norm.scale", (heads, d_rel), R.NORM, 1)
    extent = window if sliding else c.int("rel_extent", default=1024)
    lay.add(f"{a}.relative_position_bias.proj", (d_rel, extent), R.OTHER, 1)
    conv = 2 * (kv_heads * head_dim + h) * kernel
    _hybrid_cache(p, kind, kv_heads=kv_heads * passes, head_dim=head_dim, recurrent=0, conv=conv * passes,
                  kernel=kernel, window=window if sliding else None)


def inkling2_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_inkling2.py Inkling2TextModel (and modeling_inkling2_loop.py): an RMS-normed embedding, per layer
    an attention (``_inkling2_attention``), block attention residuals (a learned query: attention_input on
    every layer but the first, three queries on full-attention layers; mlp_input; final_input), RMSNorms
    (input_layernorm on sliding layers, q/k/v_input_layernorm on full ones, post_attention_layernorm), short
    convolutions after the attention and the MLP, and an MoE on every layer (a router weight, fused experts);
    lm_head of unpadded_vocab_size rows, never tied. inkling2_loop_text runs layers loop_layer_index_start to
    loop_layer_index_end loop_num_passes times: those layers carry four message gates (down_proj from 2 x
    hidden to loop_gate_rank, forget_gate_proj, message_gate_proj) and the model a message_input query [loop
    layers, 4, hidden]; each pass keeps its own copies of their cache layers (DynamicCache layers appended
    after the model's)."""
    hidden, vocab, layers = c.int("hidden_size"), c.int("vocab_size"), c.int("num_hidden_layers")
    # configuration_inkling2*.py __post_init__: every 6th layer full, the others sliding
    kinds = layer_types(c, layers, default=[HYBRID if (i + 1) % 6 == 0 else HYBRID_SLIDING for i in range(layers)])
    if set(kinds) - {HYBRID, HYBRID_SLIDING}:
        raise ConfigError(f"{c.label}: layer_types may name only hybrid and hybrid_sliding", hint=f"got {kinds}")
    loop = range(0)
    passes = 1
    if model_type == "inkling2_loop_text":
        loop_cfg = c.raw.get("loop_config") if isinstance(c.raw.get("loop_config"), dict) else {}
        lc = ConfigReader({**c.raw, **{k: loop_cfg[v] for k, v in (
            ("loop_layer_index_start", "core_start"), ("loop_layer_index_end", "core_end"),
            ("loop_num_passes", "num_passes"), ("loop_gate_rank", "gate_rank")) if v in loop_cfg}}, label=c.label)
        loop = range(lc.int("loop_layer_index_start"), lc.int("loop_layer_index_end", minimum=0))
        passes, rank = lc.int("loop_num_passes"), lc.int("loop_gate_rank")
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("embed_tokens.embed_norm", hidden, 1)
    lay.norm("norm", hidden, 1)
    lay.add("final_input.query", (hidden,), R.OTHER)
    lay.add("lm_head.weight", (c.int("unpadded_vocab_size", default=vocab), hidden), R.LM_HEAD)
    for i, kind in enumerate(kinds):
        _inkling2_attention(p, kind, passes=passes if i in loop else 1)
        full = kind == HYBRID
        if i:
            lay.add("layers.attention_input.query", (3, hidden) if full else (hidden,), R.OTHER, 1)
        lay.norm("layers.input_layernorms", hidden, 3 if full else 1)
    n_loop = len(loop)
    if n_loop:
        lay.add("message_input.query", (n_loop, 4, hidden), R.OTHER)
        lay.linear("layers.message_gates.down_proj", rank, 2 * hidden, 4 * n_loop)
        lay.linear("layers.message_gates.forget_gate_proj", hidden, rank, 4 * n_loop)
        lay.linear("layers.message_gates.message_gate_proj", hidden, rank, 4 * n_loop)
    lay.add("layers.mlp_input.query", (hidden,), R.OTHER, layers)
    lay.norm("layers.post_attention_layernorm", hidden, layers)
    kernel = c.int("conv_kernel_size", default=4)
    lay.add("layers.convolutions.conv1d.weight", (hidden, 1, kernel), R.OTHER, 2 * layers)
    experts, width = c.int("n_routed_experts", "num_local_experts"), c.int("moe_intermediate_size")
    lay.add("layers.mlp.gate.weight", (experts, hidden), R.ROUTER, layers)
    lay.add("layers.mlp.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, layers)
    lay.add("layers.mlp.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, layers)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"), expert_intermediate_size=width,
                  num_moe_layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=c.int("num_attention_heads"),
                  kv_heads=c.int("num_key_value_heads"), head_dim=c.int("head_dim"), intermediate=width, tied=False,
                  moe=moe)


# ---- RecurrentGemma (Griffin): RG-LRU recurrent blocks and local attention --------------------------------


def recurrent_gemma(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_recurrent_gemma.py: layers cycle through block_types (configuration_recurrent_gemma.py
    layers_block_type: ``(block_types * 100)[:num_hidden_layers]``). A recurrent block has linear_x, linear_y
    (hidden -> lru_width) and linear_out with biases, a depthwise conv_1d of conv1d_width taps with bias and the
    RG-LRU (recurrent_param [lru_width], input and recurrent gates as [heads, lru_width / heads, same] weights
    with [heads, lru_width / heads] biases); an attention block has q/k/v (attention_bias) and o_proj with a
    bias, head_dim = hidden / heads, and attends within attention_window_size. Every layer has
    temporal_pre_norm, channel_pre_norm and an MLP of intermediate_size / 2 with biases. A recurrent layer
    keeps its RG-LRU state [lru_width] and the last conv1d_width - 1 inputs of its convolution
    (RecurrentGemmaRecurrentBlock._setup_cache; the RG-LRU state is float32 whatever the model dtype, counted
    here in the cache dtype); an attention layer the K/V of its window."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = hidden // heads  # configuration_recurrent_gemma.py __post_init__ sets it so
    tied = c.bool("tie_word_embeddings", default=True)
    cycle = c.list("block_types") or ["recurrent", "recurrent", "attention"]
    if set(cycle) - {"recurrent", "attention"}:
        raise ConfigError(f"{c.label}: block_types may name only recurrent and attention", hint=f"got {cycle}")
    kinds = (cycle * layers)[:layers]
    n_attn = kinds.count("attention")
    n_rec = layers - n_attn
    lru, width = c.int("lru_width", default=hidden), c.int("conv1d_width", default=4)
    if lru % heads:
        raise ConfigError(f"{c.label}: lru_width {lru} is not divisible by {heads} heads")
    block = lru // heads
    window = c.int("attention_window_size", "sliding_window")
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("final_norm", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    bias = c.bool("attention_bias", default=False)
    t = "layers.temporal_block"
    lay.linear(f"{t}.q_proj", heads * head_dim, hidden, n_attn, bias=bias)
    lay.linear(f"{t}.k_proj", kv_heads * head_dim, hidden, n_attn, bias=bias)
    lay.linear(f"{t}.v_proj", kv_heads * head_dim, hidden, n_attn, bias=bias)
    lay.linear(f"{t}.o_proj", hidden, heads * head_dim, n_attn, bias=True)
    lay.linear(f"{t}.linear_x", lru, hidden, n_rec, bias=True)
    lay.linear(f"{t}.linear_y", lru, hidden, n_rec, bias=True)
    lay.linear(f"{t}.linear_out", hidden, lru, n_rec, bias=True)
    lay.add(f"{t}.conv_1d.weight", (lru, 1, width), R.OTHER, n_rec)
    lay.add(f"{t}.conv_1d.bias", (lru,), R.BIAS, n_rec)
    lay.add(f"{t}.rg_lru.recurrent_param", (lru,), R.OTHER, n_rec)
    lay.add(f"{t}.rg_lru.gate_weights", (heads, block, block), R.LINEAR, 2 * n_rec)
    lay.add(f"{t}.rg_lru.gate_biases", (heads, block), R.BIAS, 2 * n_rec)
    lay.norm("layers.norms", hidden, 2 * layers)
    ffn = c.int("intermediate_size") // 2
    p.dense_mlp("layers.mlp_block", ffn, layers, bias=True)
    for kind in kinds:
        if kind == "attention":
            p.attention_cache("sliding_attention", kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window)
        else:
            p.state_cache("rg_lru", recurrent=lru, conv=lru * (width - 1), kernel=width - 1)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=ffn, tied=tied, act=c.str("hidden_activation", default="gelu_pytorch_tanh"))


# ---- RWKV (v4) -------------------------------------------------------------------------------------------


def rwkv(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_rwkv.py: rwkv.embeddings, a LayerNorm pre_ln on the first block, then per block ln1 and ln2
    (LayerNorms with bias), the time-mixing attention (time_decay and time_first [attention_hidden_size],
    time_mix_key / value / receptance [1, 1, hidden], key / value / receptance to attention_hidden_size and
    output back, no biases) and the channel-mixing feed-forward (time_mix_key / receptance, key to
    intermediate_size, receptance [hidden, hidden], value back); ln_out; head (untied by default). The state
    is five [batch, hidden, layers] tensors (RwkvModel.forward): two token-shift states in the model dtype
    and the numerator, denominator and maximum of the WKV recurrence in float32, counted here in the cache
    dtype."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    # configuration_rwkv.py __post_init__: attention_hidden_size defaults to hidden_size, intermediate to 4 x
    attn = c.int("attention_hidden_size", default=hidden)
    ffn = c.int("intermediate_size", default=4 * hidden)
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embeddings.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("blocks.0.pre_ln", hidden, 1, bias=True)
    lay.norm("blocks.lns", hidden, 2 * layers, bias=True)
    lay.norm("ln_out", hidden, 1, bias=True)
    if not tied:
        lay.add("head.weight", (vocab, hidden), R.LM_HEAD)
    lay.add("blocks.attention.time_decay", (attn,), R.OTHER, layers)
    lay.add("blocks.attention.time_first", (attn,), R.OTHER, layers)
    lay.add("blocks.time_mix", (1, 1, hidden), R.OTHER, 5 * layers)
    for name in ("key", "value", "receptance"):
        lay.linear(f"blocks.attention.{name}", attn, hidden, layers)
    lay.linear("blocks.attention.output", hidden, attn, layers)
    lay.linear("blocks.feed_forward.key", ffn, hidden, layers)
    lay.linear("blocks.feed_forward.receptance", hidden, hidden, layers)
    lay.linear("blocks.feed_forward.value", hidden, ffn, layers)
    for _ in range(layers):
        p.state_cache("rwkv", recurrent=5 * hidden, conv=0, kernel=0)
    # No softmax attention: the head figures only fill the ModelSpec (the cache comes from the LayerCaches).
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=1, kv_heads=1, head_dim=attn, intermediate=ffn,
                  tied=tied, act="relu2", gated_ffn=False)
    return spec.model_copy(update={"norm_kind": "layer"})


# ---- xLSTM (mLSTM blocks) ---------------------------------------------------------------------------------


def _round_up(x: float, multiple: int) -> int:
    """configuration_xlstm.py round_up_to_next_multiple_of."""
    return int(((x + multiple - 1) // multiple) * multiple)


def xlstm(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_xlstm.py: backbone.embeddings, then per block norm_mlstm, the mLSTM layer and norm_ffn, a gated
    feed-forward; out_norm; lm_head (untied by default). The mLSTM layer ("single" weights) has q and k of
    qk_dim, v and ogate_preact of v_dim (configuration_xlstm.py: hidden x factor rounded up to 64), igate_preact
    and fgate_preact (one per head, with bias), a multi-head norm over v_dim and out_proj; with weight_mode
    "fused", qkv_opreact and ifgate_preact instead. The feed-forward's width is hidden x ffn_proj_factor rounded
    up to ffn_round_up_to_multiple_of (proj_up_gate and proj_up, or proj_up_gate_z fused; proj_down). Biases
    and norm biases with use_bias. xLSTMCache keeps per layer the matrix memory [heads, qk_head, v_head], the
    normalizer [heads, qk_head] and the max state [heads, 1], in the model dtype."""
    hidden = c.int("hidden_size", "embedding_dim")
    layers, vocab = c.int("num_hidden_layers", "num_blocks"), c.int("vocab_size")
    heads = c.int("num_heads")
    bias = c.bool("use_bias", default=False)
    tied = c.bool("tie_word_embeddings", default=False)
    # configuration_xlstm.py: the defaults of qk_dim_factor, v_dim_factor, ffn_proj_factor and
    # ffn_round_up_to_multiple_of; qk_dim and v_dim round up to multiples of 64
    qk = _round_up(hidden * c.float("qk_dim_factor", default=0.5), 64)
    v = _round_up(hidden * c.float("v_dim_factor", default=1.0), 64)
    if qk % heads or v % heads:
        raise ConfigError(f"{c.label}: qk_dim {qk} and v_dim {v} must divide over {heads} heads")
    multiple = c.int("ffn_round_up_to_multiple_of", default=64)
    ffn = _round_up(hidden * c.float("ffn_proj_factor", default=2.667), multiple)
    fused = c.str("weight_mode", default="single") == "fused"
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embeddings.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("out_norm", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    lay.norm("blocks.norms", hidden, 2 * layers, bias=bias)
    m = "blocks.mlstm_layer"
    if fused:
        lay.linear(f"{m}.qkv_opreact", 2 * qk + 2 * v, hidden, layers, bias=bias)
        lay.linear(f"{m}.ifgate_preact", 2 * heads, hidden, layers, bias=True)
    else:
        lay.linear(f"{m}.q", qk, hidden, layers, bias=bias)
        lay.linear(f"{m}.k", qk, hidden, layers, bias=bias)
        lay.linear(f"{m}.v", v, hidden, layers, bias=bias)
        lay.linear(f"{m}.ogate_preact", v, hidden, layers, bias=bias)
        lay.linear(f"{m}.igate_preact", heads, hidden, layers, bias=True)
        lay.linear(f"{m}.fgate_preact", heads, hidden, layers, bias=True)
    lay.norm(f"{m}.multihead_norm", v, layers, bias=bias)
    lay.linear(f"{m}.out_proj", hidden, v, layers, bias=bias)
    if fused:
        lay.linear("blocks.ffn.proj_up_gate_z", 2 * ffn, hidden, layers, bias=bias)
    else:
        lay.linear("blocks.ffn.proj_up_gate", ffn, hidden, layers, bias=bias)
        lay.linear("blocks.ffn.proj_up", ffn, hidden, layers, bias=bias)
    lay.linear("blocks.ffn.proj_down", hidden, ffn, layers, bias=bias)
    qk_head, v_head = qk // heads, v // heads
    for _ in range(layers):
        p.state_cache("mlstm", recurrent=heads * (qk_head * v_head + qk_head + 1), conv=0, kernel=0)
    # No softmax attention: the head figures only fill the ModelSpec (the cache comes from the LayerCaches).
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads, head_dim=qk_head,
                  v_head_dim=v_head, intermediate=ffn, tied=tied, act="silu")


# ---- Gemma 3n: per-layer MLP widths, per-layer embeddings, AltUp, LAuReL, KV sharing ------------------------


def _per_layer_ints(c: ConfigReader, key: str, layers: int) -> list[int]:
    """A config value given once for all layers or as a list with one entry per layer."""
    raw = c.raw.get(key)
    values = raw if isinstance(raw, list) else [c.int(key)] * layers
    if len(values) != layers or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{c.label}: {key!r} must be a positive whole number or a list of {layers} of them",
                          hint=f"got {raw!r}")
    return list(values)


def gemma3n_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gemma3n.py Gemma3nTextModel: per layer an attention (q_proj, q_norm, o_proj; k_proj, v_proj and
    k_norm except on the last num_kv_shared_layers layers, which reuse the K/V of the last earlier layer of their
    kind and cache nothing: configuration_gemma3n.py kv_sharing_modes; v_norm has no weight), a gated MLP of
    the layer's own intermediate_size (a list, one per layer), LAuReL (linear_left to laurel_rank,
    linear_right, post_laurel_norm), AltUp (correct_output_scale, correction_coefs [n, n], prediction_coefs
    [n^2, n], modality_router [n, hidden], router_norm; n = altup_num_inputs), per-layer inputs
    (per_layer_input_gate, per_layer_projection, post_per_layer_input_norm) and four more norms; the model has
    embed_tokens_per_layer [vocab_size_per_layer_input, layers x hidden_size_per_layer_input],
    per_layer_model_projection, per_layer_projection_norm and n - 1 altup_projections and
    altup_unembed_projections [hidden, hidden]; tied embeddings."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads)
    tied = c.bool("tie_word_embeddings", default=True)
    bias = c.bool("attention_bias", default=False)
    widths = _per_layer_ints(c, "intermediate_size", layers)
    # configuration_gemma3n.py __post_init__: every 5th layer full attention, the others sliding
    kinds = layer_types(c, layers, default=[FULL if (i + 1) % 5 == 0 else SLIDING for i in range(layers)])
    if set(kinds) - {FULL, SLIDING}:
        raise ConfigError(f"{c.label}: layer_types may name only full_attention and sliding_attention")
    window = c.int("sliding_window", default=None)
    if SLIDING in kinds and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    shared_from = layers - c.int("num_kv_shared_layers", default=0, minimum=0)
    per_layer = c.int("hidden_size_per_layer_input")
    n_alt, rank = c.int("altup_num_inputs", default=4), c.int("laurel_rank", default=64)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("norm", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    per_layer_vocab = c.int("vocab_size_per_layer_input", default=262_144)  # configuration_gemma3n.py default
    lay.add("embed_tokens_per_layer.weight", (per_layer_vocab, layers * per_layer), R.EMBEDDING)
    lay.linear("per_layer_model_projection", layers * per_layer, hidden, 1)
    lay.norm("per_layer_projection_norm", per_layer, 1)
    lay.linear("altup_projections", hidden, hidden, 2 * (n_alt - 1))
    lay.linear("layers.self_attn.q_proj", heads * head_dim, hidden, layers, bias=bias)
    lay.norm("layers.self_attn.q_norm", head_dim, layers)
    lay.linear("layers.self_attn.o_proj", hidden, heads * head_dim, layers, bias=bias)
    n_kv = min(layers, max(0, shared_from))
    lay.linear("layers.self_attn.k_proj", kv_heads * head_dim, hidden, n_kv, bias=bias)
    lay.linear("layers.self_attn.v_proj", kv_heads * head_dim, hidden, n_kv, bias=bias)
    lay.norm("layers.self_attn.k_norm", head_dim, n_kv)
    for i, (kind, width) in enumerate(zip(kinds, widths, strict=True)):
        p.dense_mlp("layers.mlp", width, 1)
        if i >= shared_from:
            p.caches.append(LayerCache(kind="none", mixer=f"{kind} (reuses an earlier layer's K/V)"))
        else:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
    lay.norm("layers.norms", hidden, 5 * layers)
    lay.linear("layers.per_layer_input_gate", per_layer, hidden, layers)
    lay.linear("layers.per_layer_projection", hidden, per_layer, layers)
    lay.linear("layers.laurel.linear_left", rank, hidden, layers)
    lay.linear("layers.laurel.linear_right", hidden, rank, layers)
    lay.norm("layers.laurel.post_laurel_norm", hidden, layers)
    lay.add("layers.altup.correct_output_scale", (hidden,), R.OTHER, layers)
    lay.linear("layers.altup.correction_coefs", n_alt, n_alt, layers, role=R.OTHER)
    lay.linear("layers.altup.prediction_coefs", n_alt * n_alt, n_alt, layers, role=R.OTHER)
    lay.linear("layers.altup.modality_router", n_alt, hidden, layers, role=R.ROUTER)
    lay.norm("layers.altup.router_norm", hidden, layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=max(widths), tied=tied,
                  act=c.str("hidden_activation", "hidden_act", default="gelu_pytorch_tanh"))


# ---- BLT: byte latent transformer ---------------------------------------------------------------------------

_BLT_PARTS = ("patcher_config", "encoder_config", "global_config", "decoder_config")


def _blt_stack(p: Parts, prefix: str, c: ConfigReader) -> tuple[int, int, int, int]:
    """BltTransformerLayer x num_hidden_layers of one sub-model (modeling_blt.py: q/k/v/o without bias,
    head_dim = hidden / heads, a gated MLP, input_layernorm and post_attention_layernorm). Returns (layers,
    hidden, kv_heads, head_dim)."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = hidden // heads
    # configuration_blt.py: intermediate_size defaults to int(8 x hidden / 3) in each sub-config
    ffn = c.int("intermediate_size", default=int(8 * hidden / 3))
    lay = p.lay
    lay.linear(f"{prefix}.layers.self_attn.q_proj", heads * head_dim, hidden, layers)
    lay.linear(f"{prefix}.layers.self_attn.k_proj", kv_heads * head_dim, hidden, layers)
    lay.linear(f"{prefix}.layers.self_attn.v_proj", kv_heads * head_dim, hidden, layers)
    lay.linear(f"{prefix}.layers.self_attn.o_proj", hidden, heads * head_dim, layers)
    for name, shape in (("gate_proj", (ffn, hidden)), ("up_proj", (ffn, hidden)), ("down_proj", (hidden, ffn))):
        lay.linear(f"{prefix}.layers.mlp.{name}", *shape, layers)
    lay.norm(f"{prefix}.layers.norms", hidden, 2 * layers)
    return layers, hidden, kv_heads, head_dim


def _blt_cross_attention(p: Parts, prefix: str, c: ConfigReader, n: int) -> None:
    """BltCrossAttention: q/k/v/o of hidden (heads x hidden / heads) and q_norm / k_norm over hidden."""
    hidden = c.int("hidden_size")
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        p.lay.linear(f"{prefix}.cross_attn_layers.{name}", hidden, hidden, n)
    p.lay.norm(f"{prefix}.cross_attn_layers.q_norm", hidden, n)
    p.lay.norm(f"{prefix}.cross_attn_layers.k_norm", hidden, n)


def blt(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_blt.py BltForCausalLM: a byte-level local encoder (embed_tokens, its layers, a
    patch_embedding_projection to hidden x cross_attn_k, cross-attention on every layer or only the last), a
    global transformer over patches (token_embedding_projection when the encoder's hidden x cross_attn_k is not
    its hidden size), a local decoder (patch_embedding_projection from hidden_size_global, cross-attention,
    norm), the hash n-gram embeddings (encoder_hash_byte_group_vocab x nb_functions x group sizes rows), the
    entropy patcher with its own embeddings and lm_head when patch_in_forward, and an lm_head; each part from
    its sub-config. Per byte the local encoder and local decoder layers keep their K/V (BltModel.forward: an
    EncoderDecoderCache, the encoder in its self-attention cache, the decoder in the other); the patcher and the
    global transformer run without a cache and keep nothing."""
    subs = {}
    for key in _BLT_PARTS:
        raw = c.raw.get(key)
        if not isinstance(raw, dict):
            raise ConfigError(f"{c.label}: a BLT config needs {', '.join(_BLT_PARTS)} as objects; {key} is missing",
                              hint="use the config.json of a BLT checkpoint converted for transformers")
        subs[key] = ConfigReader(raw, label=f"{c.label} ({key})")
    enc, dec, glob, pat = (subs[k] for k in ("encoder_config", "decoder_config", "global_config", "patcher_config"))
    vocab = c.int("vocab_size", default=260)  # configuration_blt.py BltConfig.vocab_size
    p = Parts(c, dec.int("hidden_size"))
    lay = p.lay
    enc_layers, enc_h, enc_kv, enc_hd = _blt_stack(p, "local_encoder", enc)
    lay.add("local_encoder.embed_tokens.weight", (enc.int("vocab_size", default=vocab), enc_h), R.EMBEDDING)
    lay.linear("local_encoder.patch_embedding_projection", enc_h * enc.int("cross_attn_k", default=2), enc_h, 1)
    # configuration_blt.py: the encoder cross-attends on its last layer only, the decoder on every layer
    _blt_cross_attention(p, "local_encoder", enc, enc_layers if enc.bool("cross_attn_all_layers", default=False)
                         else 1)
    glob_layers, glob_h, _, _ = _blt_stack(p, "global_transformer", glob)
    cross_out = enc_h * c.int("cross_attn_k", default=2)
    if cross_out != glob_h:
        lay.linear("global_transformer.token_embedding_projection", glob_h, cross_out, 1)
    dec_layers, dec_h, dec_kv, dec_hd = _blt_stack(p, "local_decoder", dec)
    lay.linear("local_decoder.patch_embedding_projection", dec_h * dec.int("cross_attn_k", default=2),
               dec.int("hidden_size_global", default=glob_h), 1)
    lay.norm("local_decoder.norm", dec_h, 1)
    _blt_cross_attention(p, "local_decoder", dec, dec_layers if dec.bool("cross_attn_all_layers", default=True)
                         else 1)
    # configuration_blt.py defaults: [3, 4, 5, 6, 7, 8] byte n-grams, 500002 rows each, one hash function
    groups = c.list("encoder_hash_byte_group_size") or [3, 4, 5, 6, 7, 8]
    rows = c.int("encoder_hash_byte_group_vocab", default=500002) * c.int("encoder_hash_byte_group_nb_functions",
                                                                          default=1) * len(groups)
    lay.add("encoder_hash_tok_embedding.weight", (rows, enc_h), R.EMBEDDING)
    lay.add("lm_head.weight", (vocab, dec_h), R.LM_HEAD)
    pat_layers = 0
    if c.bool("patch_in_forward", default=True):
        pat_layers, pat_h, _, _ = _blt_stack(p, "patcher", pat)
        pat_vocab = pat.int("vocab_size", default=vocab)
        lay.add("patcher.embed_tokens.weight", (pat_vocab, pat_h), R.EMBEDDING)
        lay.norm("patcher.norm", pat_h, 1)
        lay.add("patcher.lm_head.weight", (pat_vocab, pat_h), R.LM_HEAD)
    for _ in range(pat_layers):
        p.caches.append(LayerCache(kind="none", mixer="entropy patcher (run without a cache)"))
    for _ in range(enc_layers):
        p.attention_cache(FULL, kv_heads=enc_kv, key_dim=enc_hd, value_dim=enc_hd)
    for _ in range(glob_layers):
        p.caches.append(LayerCache(kind="none", mixer="global transformer (recomputed, not cached)"))
    for _ in range(dec_layers):
        p.attention_cache(FULL, kv_heads=dec_kv, key_dim=dec_hd, value_dim=dec_hd)
    p.notes.append("BLT: the cache is read from modeling_blt.py, not measured; the activations are estimated as "
                   "if every layer were one of the local decoder's")
    layers = pat_layers + enc_layers + glob_layers + dec_layers
    dec_ffn = dec.int("intermediate_size", default=int(8 * dec_h / 3))
    return finish(p, model_type, layers=layers, vocab=vocab, heads=dec.int("num_attention_heads"), kv_heads=dec_kv,
                  head_dim=dec_hd, intermediate=dec_ffn, tied=False, act=dec.str("hidden_act", default="silu"))


FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    "zamba": zamba,
    "zamba2": zamba,
    "zaya": zaya,
    "inkling_text": inkling_text,
    "inkling2_text": inkling2_text,
    "inkling2_loop_text": inkling2_text,
    "recurrent_gemma": recurrent_gemma,
    "rwkv": rwkv,
    "xlstm": xlstm,
    "gemma3n_text": gemma3n_text,
    "blt": blt,
}
