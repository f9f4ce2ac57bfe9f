"""Decoder families whose layers differ from one another: hybrid linear-attention, state-space and
sparse-attention models, per-layer head counts, chunked attention.

Each parser mirrors the module tree of the family's modeling file in transformers 5.25 (the file is named
at each parser; tests/test_architectures.py replays what transformers 5.25 builds from each family's
default config, parameter for parameter, and the cache it holds after a forward). Besides the tensors, each
parser gives one ``LayerCache`` per decoder layer: what that layer keeps while generating.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpuplan.errors import ConfigError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.layout import Layout, check_heads, max_positions, native_dtype
from gpuplan.models.quant import parse_quantization_config
from gpuplan.models.spec import LayerCache, MlaSpec, ModelSpec, MoeSpec, StateMixerSpec, TensorRole

R = TensorRole
FP32_BYTES = 4

# ---- reading the layer pattern ---------------------------------------------------------------------------

FULL = "full_attention"
SLIDING = "sliding_attention"


def layer_types(c: ConfigReader, layers: int, *, default: Sequence[str] | None = None) -> list[str]:
    """``layer_types`` of the config, one per layer; ``default`` when the config has none."""
    kinds = c.list("layer_types")
    if kinds is None:
        if default is None:
            raise ConfigError(f"{c.label}: missing 'layer_types'", hint="the config must say which layer is which")
        kinds = list(default)
    if len(kinds) < layers or not all(isinstance(k, str) for k in kinds):
        raise ConfigError(f"{c.label}: 'layer_types' must name a kind for each of the {layers} layers",
                          hint=f"got {kinds!r}")
    return [str(k) for k in kinds[:layers]]


# ---- the parts of a decoder layer ------------------------------------------------------------------------


@dataclass
class Parts:
    """Tensors and per-layer caches being assembled for one model."""

    c: ConfigReader
    hidden: int
    lay: Layout = field(default_factory=Layout)
    caches: list[LayerCache] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conv_kernel: int = 0
    """Taps of the convolution of the last state mixer added (its state_cache entries record it)."""
    recurrent_bytes: int | None = None
    """Bytes per element of the last state mixer's recurrent state in transformers, when fixed (float32)."""
    mixer: StateMixerSpec | None = None
    """The geometry of the model's recurrent mixer, for the prefill activations (transformers engine)."""

    def gqa(self, prefix: str, n: int, *, heads: int, kv_heads: int, head_dim: int, bias: bool = False,
            o_bias: bool | None = None, qk_norm: str | None = None, gated: bool = False, sinks: bool = False,
            v_head_dim: int | None = None) -> None:
        """q/k/v/o projections (modeling_llama.py LlamaAttention), with the variants families add:
        ``qk_norm`` "head" (a per-head RMSNorm, modeling_qwen3.py) or "full" (over all heads,
        modeling_olmo2.py); ``gated`` doubles q_proj for an output gate (modeling_qwen3_next.py);
        ``sinks`` one learned logit per head (modeling_gpt_oss.py)."""
        lay, h = self.lay, self.hidden
        vd = v_head_dim or head_dim
        lay.linear(f"{prefix}.q_proj", heads * head_dim * (2 if gated else 1), h, n, bias=bias)
        lay.linear(f"{prefix}.k_proj", kv_heads * head_dim, h, n, bias=bias)
        lay.linear(f"{prefix}.v_proj", kv_heads * vd, h, n, bias=bias)
        lay.linear(f"{prefix}.o_proj", h, heads * vd, n, bias=bias if o_bias is None else o_bias)
        if qk_norm == "head":
            lay.norm(f"{prefix}.q_norm", head_dim, n)
            lay.norm(f"{prefix}.k_norm", head_dim, n)
        elif qk_norm == "full":
            lay.norm(f"{prefix}.q_norm", heads * head_dim, n)
            lay.norm(f"{prefix}.k_norm", kv_heads * head_dim, n)
        if sinks:
            lay.add(f"{prefix}.sinks", (heads,), R.OTHER, n)

    def dense_mlp(self, prefix: str, width: int, n: int, *, bias: bool = False) -> None:
        lay, h = self.lay, self.hidden
        lay.linear(f"{prefix}.gate_proj", width, h, n, bias=bias)
        lay.linear(f"{prefix}.up_proj", width, h, n, bias=bias)
        lay.linear(f"{prefix}.down_proj", h, width, n, bias=bias)

    def experts(self, prefix: str, n: int, *, experts: int, width: int, router_bias: bool = False,
                score_bias: bool = False, gated: bool = True) -> None:
        """A router and fused experts as transformers 5 stores them (integrations/moe.py): gate_up_proj
        [E, 2I, h] and down_proj [E, h, I]; ``score_bias`` is DeepSeek-V3's e_score_correction_bias."""
        lay, h = self.lay, self.hidden
        lay.add(f"{prefix}.gate.weight", (experts, h), R.ROUTER, n)
        if router_bias:
            lay.add(f"{prefix}.gate.bias", (experts,), R.ROUTER, n)
        if score_bias:
            lay.add(f"{prefix}.gate.e_score_correction_bias", (experts,), R.ROUTER, n)
        lay.add(f"{prefix}.experts.gate_up_proj", (experts, (2 if gated else 1) * width, h), R.EXPERT_LINEAR, n)
        lay.add(f"{prefix}.experts.down_proj", (experts, h, width), R.EXPERT_LINEAR, n)

    def attention_cache(self, mixer: str, *, kv_heads: int, key_dim: int, value_dim: int,
                        window: int | None = None, chunked: bool = False, indexer_dim: int = 0) -> None:
        self.caches.append(LayerCache(kind="attention", mixer=mixer, kv_heads=kv_heads, key_dim=key_dim,
                                      value_dim=value_dim, window=window, chunked=chunked,
                                      indexer_dim=indexer_dim))

    def state_cache(self, mixer: str, *, recurrent: int, conv: int, kernel: int | None = None) -> None:
        self.caches.append(LayerCache(kind="state", mixer=mixer, recurrent_elems=recurrent, conv_elems=conv,
                                      conv_kernel=self.conv_kernel if kernel is None else kernel,
                                      recurrent_bytes=self.recurrent_bytes if recurrent else None))


def gated_delta_net(p: Parts, prefix: str, n: int) -> tuple[int, int]:
    """Qwen3-Next's Gated DeltaNet (modeling_qwen3_next.py Qwen3NextGatedDeltaNet): in_proj_qkvz and
    in_proj_ba, a depthwise conv1d over q, k and v (no bias), dt_bias and A_log per value head, a gated
    RMSNorm of the value head width, out_proj. Returns (recurrent, conv) elements one sequence keeps:
    the state [v_heads, k_dim, v_dim] and the conv window [conv_dim, kernel] (cache_utils.py
    LinearAttentionLayer keeps ``kernel`` columns)."""
    c, lay, h = p.c, p.lay, p.hidden
    v_heads, k_heads = c.int("linear_num_value_heads"), c.int("linear_num_key_heads")
    k_dim, v_dim = c.int("linear_key_head_dim"), c.int("linear_value_head_dim")
    kernel = c.int("linear_conv_kernel_dim")
    p.conv_kernel = kernel
    # torch_chunk_gated_delta_rule computes the state in float32 and LinearAttentionLayer.lazy_initialization
    # keeps it with torch.zeros_like (transformers 5.17 and 5.25 modeling_qwen3_next.py, cache_utils.py).
    p.recurrent_bytes = FP32_BYTES
    key, value = k_heads * k_dim, v_heads * v_dim
    conv_dim = 2 * key + value
    lay.linear(f"{prefix}.in_proj_qkvz", 2 * key + 2 * value, h, n)
    lay.linear(f"{prefix}.in_proj_ba", 2 * v_heads, h, n)
    lay.add(f"{prefix}.conv1d.weight", (conv_dim, 1, kernel), R.OTHER, n)
    lay.add(f"{prefix}.dt_bias", (v_heads,), R.OTHER, n)
    lay.add(f"{prefix}.A_log", (v_heads,), R.OTHER, n)
    lay.norm(f"{prefix}.norm", v_dim, n)
    lay.linear(f"{prefix}.out_proj", h, value, n)
    return v_heads * k_dim * v_dim, conv_dim * kernel


def mamba1(p: Parts, prefix: str, n: int, *, inner_norms: bool, inner: int | None = None) -> tuple[int, int]:
    """Mamba (modeling_jamba.py JambaMambaMixer, modeling_falcon_mamba.py): in_proj to 2 x d_inner, a
    depthwise conv1d, x_proj to dt_rank + 2 d_state, dt_proj with bias, A_log [d_inner, d_state], D,
    out_proj; Jamba adds RMSNorms on dt, B and C (``inner_norms``). Returns (recurrent, conv) elements per
    sequence: the SSM state [d_inner, d_state] and the conv window [d_inner, d_conv]."""
    c, lay, h = p.c, p.lay, p.hidden
    p.recurrent_bytes = None  # the state follows the cache's dtype, as before this reader checked otherwise
    expand, d_state, d_conv = c.int("mamba_expand", "expand"), c.int("mamba_d_state", "state_size"), \
        c.int("mamba_d_conv", "conv_kernel")
    inner = inner or expand * h
    p.conv_kernel = d_conv
    rank_raw = c.raw.get("mamba_dt_rank", c.raw.get("time_step_rank", "auto"))
    # "auto": math.ceil(hidden_size / 16) (configuration_jamba.py, configuration_falcon_mamba.py)
    dt_rank = -(-h // 16) if rank_raw == "auto" else c.int("mamba_dt_rank", "time_step_rank")
    proj_bias = c.bool("mamba_proj_bias", "use_bias", default=False)
    lay.linear(f"{prefix}.in_proj", 2 * inner, h, n, bias=proj_bias)
    lay.add(f"{prefix}.conv1d.weight", (inner, 1, d_conv), R.OTHER, n)
    if c.bool("mamba_conv_bias", "use_conv_bias", default=True):
        lay.add(f"{prefix}.conv1d.bias", (inner,), R.BIAS, n)
    lay.linear(f"{prefix}.x_proj", dt_rank + 2 * d_state, inner, n)
    lay.linear(f"{prefix}.dt_proj", inner, dt_rank, n, bias=True)
    lay.add(f"{prefix}.A_log", (inner, d_state), R.OTHER, n)
    lay.add(f"{prefix}.D", (inner,), R.OTHER, n)
    lay.linear(f"{prefix}.out_proj", h, inner, n, bias=proj_bias)
    if inner_norms:
        lay.norm(f"{prefix}.dt_layernorm", dt_rank, n)
        lay.norm(f"{prefix}.b_layernorm", d_state, n)
        lay.norm(f"{prefix}.c_layernorm", d_state, n)
    return inner * d_state, inner * d_conv


def mamba2(p: Parts, prefix: str, n: int, *, inner: int, gated_norm: bool, proj_bias: bool | None = None,
           out_bias: bool | None = None, chunk_default: int = 256) -> tuple[int, int]:
    """Mamba-2 (modeling_bamba.py BambaMixer, modeling_falcon_h1.py FalconH1Mixer and their copies):
    in_proj to d_inner + conv_dim + n_heads, a depthwise conv1d over conv_dim = d_inner + 2 groups
    d_state, dt_bias / A_log / D per head, an optional gated RMSNorm over d_inner, out_proj. Returns
    (recurrent, conv) elements per sequence: the state [n_heads, d_head, d_state] and the conv window
    [conv_dim, d_conv]."""
    c, lay, h = p.c, p.lay, p.hidden
    heads = c.int("mamba_n_heads", "mamba_num_heads")
    d_head = c.int("mamba_d_head", "mamba_head_dim")
    d_state, d_conv = c.int("mamba_d_state", "ssm_state_size"), c.int("mamba_d_conv", "conv_kernel")
    groups = c.int("mamba_n_groups", "n_groups", default=1)
    p.conv_kernel = d_conv
    # The torch chunk scan (mamba2_chunk_scan / torch_forward) runs on hidden_states.float(): its final state,
    # which LinearAttentionLayer copies with torch.zeros_like, is float32 (transformers 5.17 and 5.25
    # modeling_nemotron_h.py, modeling_bamba.py, modeling_mamba2.py and the copies).
    p.recurrent_bytes = FP32_BYTES
    conv_dim = inner + 2 * groups * d_state
    bias = c.bool("mamba_proj_bias", "use_bias", default=False) if proj_bias is None else proj_bias
    lay.linear(f"{prefix}.in_proj", inner + conv_dim + heads, h, n, bias=bias)
    lay.add(f"{prefix}.conv1d.weight", (conv_dim, 1, d_conv), R.OTHER, n)
    if c.bool("mamba_conv_bias", "use_conv_bias", default=True):
        lay.add(f"{prefix}.conv1d.bias", (conv_dim,), R.BIAS, n)
    for name in ("dt_bias", "A_log", "D"):
        lay.add(f"{prefix}.{name}", (heads,), R.OTHER, n)
    if gated_norm:
        lay.norm(f"{prefix}.norm", inner, n)
    lay.linear(f"{prefix}.out_proj", h, inner, n, bias=bias if out_bias is None else out_bias)
    if n:
        p.mixer = StateMixerSpec(kind="mamba2", heads=heads, value_dim=d_head, state_size=d_state, groups=groups,
                                 chunk=c.int("mamba_chunk_size", "chunk_size", default=chunk_default),
                                 in_proj=inner + conv_dim + heads, conv_dim=conv_dim)
    return heads * d_head * d_state, conv_dim * d_conv


# ---- assembling the spec ---------------------------------------------------------------------------------


# Config keys that name the recurrent-state dtype: configuration_qwen3_5.py / Qwen3.5 checkpoints
# (mamba_ssm_dtype), configuration_nemotron_h.py (mamba_ssm_cache_dtype).
STATE_DTYPE_KEYS = ("mamba_ssm_dtype", "mamba_ssm_cache_dtype")


def finish(p: Parts, model_type: str, *, layers: int, vocab: int, heads: int, kv_heads: int, head_dim: int,
           intermediate: int, tied: bool, moe: MoeSpec | None = None, mla: MlaSpec | None = None,
           v_head_dim: int | None = None, mtp: int = 0, act: str | None = None, gated_ffn: bool = True
           ) -> ModelSpec:
    """The ModelSpec of a parsed model. ``layer_windows`` mirrors the caches (None for full attention
    and for layers that are not attention) so the engines that read only windows stay consistent."""
    c = p.c
    windows = tuple(lc.window if lc.kind in ("attention", "hybrid") else None for lc in p.caches)
    if len(p.caches) != layers:
        raise AssertionError(f"{model_type}: {len(p.caches)} layer caches for {layers} layers")
    return ModelSpec(
        model_type=model_type,
        architectures=tuple(c.list("architectures") or ()),
        num_hidden_layers=layers,
        hidden_size=p.hidden,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=v_head_dim or head_dim,
        intermediate_size=intermediate,
        ffn_gated=gated_ffn,
        hidden_act=act or c.str("hidden_act", "hidden_activation", default="silu"),
        mla=mla,
        moe=moe,
        layer_windows=windows,
        tie_word_embeddings=tied,
        max_position_embeddings=max_positions(c),
        native_dtype=native_dtype(c),
        quantization=parse_quantization_config(c),
        mtp_layers=mtp,
        tensors=tuple(p.lay.groups),
        notes=tuple(p.notes),
        layer_caches=tuple(p.caches),
        state_mixer=p.mixer,
        state_dtypes=tuple((key, c.raw[key]) for key in STATE_DTYPE_KEYS if isinstance(c.raw.get(key), str)),
    )


def _embed_and_head(p: Parts, vocab: int, tied: bool) -> None:
    p.lay.add("embed_tokens.weight", (vocab, p.hidden), R.EMBEDDING)
    p.lay.norm("norm", p.hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, p.hidden), R.LM_HEAD)


# ---- Qwen3-Next, Qwen3.5 ---------------------------------------------------------------------------------


def decoder_dims(c: ConfigReader, *, config_head_dim: bool = True) -> tuple[int, int, int, int, int, int]:
    """The sizes every decoder config states: hidden, layers, vocabulary, heads, KV heads (default: heads,
    checked against heads) and head_dim (the config's, else hidden / heads; always hidden / heads for the
    families whose modeling code ignores a head_dim key: ``config_head_dim=False``)."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads) if config_head_dim else hidden // heads
    return hidden, layers, vocab, heads, kv_heads, head_dim


def qwen3_next(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_qwen3_next.py (and qwen3_5 / qwen3_5_moe, generated from it): ``layer_types`` of
    linear_attention (Gated DeltaNet) and full_attention (gated q, per-head q/k norms); every layer's FFN
    is MoE (a shared expert with a sigmoid gate) unless listed in mlp_only_layers or off the
    decoder_sparse_step, or dense when the config has no experts (qwen3_5)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    # configuration_qwen3_next.py / configuration_qwen3_5.py: without layer_types, every
    # full_attention_interval-th layer (default 4) is full attention, the others linear (the Hub configs)
    interval = c.int("full_attention_interval", default=4)
    kinds = layer_types(c, layers, default=["linear_attention" if (i + 1) % interval else FULL
                                            for i in range(layers)])
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    n_linear = kinds.count("linear_attention")
    n_full = kinds.count(FULL)
    if n_linear + n_full != layers:
        raise ConfigError(f"{c.label}: layer_types may name only linear_attention and full_attention",
                          hint=f"got {sorted(set(kinds))}")
    recurrent, conv = gated_delta_net(p, "layers.linear_attn", n_linear)
    p.gqa("layers.self_attn", n_full, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
          qk_norm="head", gated=True)
    for kind in kinds:
        if kind == FULL:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
        else:
            p.state_cache(kind, recurrent=recurrent, conv=conv)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    experts = c.int("num_experts", default=0, minimum=0)
    moe = None
    intermediate = c.int("intermediate_size", default=0, minimum=0)
    if experts:
        step = c.int("decoder_sparse_step", default=1)
        dense_only = set(c.list("mlp_only_layers") or [])
        moe_ids = [i for i in range(layers) if i not in dense_only and (i + 1) % step == 0]
        width = c.int("moe_intermediate_size")
        shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
        p.experts("layers.mlp", len(moe_ids), experts=experts, width=width)
        if shared:
            p.dense_mlp("layers.mlp.shared_expert", shared, len(moe_ids))
            p.lay.add("layers.mlp.shared_expert_gate.weight", (1, hidden), R.ROUTER, len(moe_ids))
        p.dense_mlp("layers.mlp", intermediate, layers - len(moe_ids))
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=1 if shared else 0,
                      shared_expert_intermediate_size=shared, num_moe_layers=len(moe_ids),
                      num_dense_layers=layers - len(moe_ids))
    else:
        p.dense_mlp("layers.mlp", c.int("intermediate_size"), layers)
    mtp = c.int("mtp_num_hidden_layers", "num_nextn_predict_layers", default=0, minimum=0)
    if mtp:
        p.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; transformers ignores them "
                       "(_keys_to_ignore_on_load_unexpected: mtp.*), so they are not counted")
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate or (moe.expert_intermediate_size if moe else 0), tied=tied, moe=moe)
    mixer = StateMixerSpec(kind="gated_delta_net", heads=c.int("linear_num_value_heads"),
                           key_heads=c.int("linear_num_key_heads"), key_dim=c.int("linear_key_head_dim"),
                           value_dim=c.int("linear_value_head_dim"))
    return spec.model_copy(update={"state_mixer": mixer if n_linear else None})


# ---- DeepSeek sparse attention: DeepSeek-V3.2, GLM-5 -------------------------------------------------------


def _mla(c: ConfigReader) -> MlaSpec:
    return MlaSpec(kv_lora_rank=c.int("kv_lora_rank"), q_lora_rank=c.int("q_lora_rank", default=None),
                   qk_nope_head_dim=c.int("qk_nope_head_dim"), qk_rope_head_dim=c.int("qk_rope_head_dim"),
                   v_head_dim=c.int("v_head_dim"))


def mla_attention(p: Parts, prefix: str, n: int, mla: MlaSpec, heads: int, *, bias: bool = False) -> None:
    """Multi-head latent attention (modeling_deepseek_v3.py DeepseekV3Attention)."""
    lay, h = p.lay, p.hidden
    qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    if mla.q_lora_rank:
        lay.linear(f"{prefix}.q_a_proj", mla.q_lora_rank, h, n, bias=bias)
        lay.norm(f"{prefix}.q_a_layernorm", mla.q_lora_rank, n)
        lay.linear(f"{prefix}.q_b_proj", heads * qk_dim, mla.q_lora_rank, n)
    else:
        lay.linear(f"{prefix}.q_proj", heads * qk_dim, h, n)
    lay.linear(f"{prefix}.kv_a_proj_with_mqa", mla.latent_dim, h, n, bias=bias)
    lay.norm(f"{prefix}.kv_a_layernorm", mla.kv_lora_rank, n)
    lay.linear(f"{prefix}.kv_b_proj", heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank, n)
    lay.linear(f"{prefix}.o_proj", h, heads * mla.v_head_dim, n, bias=bias)


def _dense_or_sparse(c: ConfigReader, layers: int) -> list[bool]:
    """Which layers are MoE: ``mlp_layer_types`` ("dense" / "sparse") or the first_k_dense_replace rule."""
    kinds = c.list("mlp_layer_types")
    if kinds is not None:
        if len(kinds) < layers:
            raise ConfigError(f"{c.label}: mlp_layer_types has {len(kinds)} entries for {layers} layers")
        return [k == "sparse" for k in kinds[:layers]]
    first_dense = c.int("first_k_dense_replace", default=0, minimum=0)
    return [i >= first_dense for i in range(layers)]


# GLM-4.5-style families whose attention always has per-head q/k RMSNorms (modeling_exaone_moe.py,
# modeling_hy_v3.py: q_norm / k_norm of head_dim)
_PER_HEAD_QK_NORM = frozenset({"exaone_moe", "hy_v3"})


def deepseek_moe(c: ConfigReader, model_type: str) -> ModelSpec:
    """DeepSeek-V3-style MoE decoders: shared experts, dense first layers (first_k_dense_replace or
    mlp_layer_types), the router's e_score_correction_bias buffer that the checkpoints store
    (modeling_deepseek_v32.py, modeling_glm4_moe.py: nn.Buffer). The attention is one of:

    - MLA (modeling_glm4_moe_lite.py), cached as the latent (kv_lora_rank) for the key and the rotary key
      (qk_rope_head_dim) for the value, one head;
    - MLA with DeepSeek sparse attention's lightning indexer (modeling_deepseek_v32.py,
      modeling_glm_moe_dsa.py): wq_b, wk, a LayerNorm k_norm with bias, weights_proj per layer, and the
      indexer's key (index_head_dim) cached per token (cache_utils.py DynamicIndexedLayer); GLM-5's
      ``indexer_types`` "shared" layers reuse the previous layer's selection and have no indexer;
    - grouped-query attention (modeling_glm4_moe.py): q/k/v with attention_bias, o_proj without,
      optional per-head q/k norms (use_qk_norm), head_dim from the config or hidden // heads.
    """
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    bias = c.bool("attention_bias", default=False)
    mla = _mla(c) if c.has("kv_lora_rank") else None
    if mla is not None:
        mla_attention(p, "layers.self_attn", layers, mla, heads, bias=bias)
        with_indexer = [False] * layers
        index_dim = 0
        if c.has("index_n_heads"):
            if mla.q_lora_rank is None:
                raise ConfigError(f"{c.label}: the sparse-attention indexer needs q_lora_rank")
            index_heads, index_dim = c.int("index_n_heads"), c.int("index_head_dim")
            mla = mla.model_copy(update={"index_heads": index_heads})
            with_indexer = [k != "shared" for k in (c.list("indexer_types") or ["full"] * layers)[:layers]]
            n_idx = sum(with_indexer)
            p.lay.linear("layers.self_attn.indexer.wq_b", index_heads * index_dim, mla.q_lora_rank, n_idx)
            p.lay.linear("layers.self_attn.indexer.wk", index_dim, hidden, n_idx)
            p.lay.norm("layers.self_attn.indexer.k_norm", index_dim, n_idx, bias=True)
            p.lay.linear("layers.self_attn.indexer.weights_proj", index_heads, hidden, n_idx)
        for has_indexer in with_indexer:
            p.attention_cache("indexed_attention" if index_dim else FULL, kv_heads=1, key_dim=mla.kv_lora_rank,
                              value_dim=mla.qk_rope_head_dim, indexer_dim=index_dim if has_indexer else 0)
        kv_heads, head_dim = heads, mla.qk_nope_head_dim + mla.qk_rope_head_dim
        v_head_dim: int | None = mla.v_head_dim
    else:
        kv_heads = c.int("num_key_value_heads", default=heads)
        check_heads(c, heads, kv_heads)
        head_dim, v_head_dim = c.int("head_dim", default=hidden // heads), None
        qk_norm = c.bool("use_qk_norm", default=model_type in _PER_HEAD_QK_NORM)
        p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
              o_bias=False, qk_norm="head" if qk_norm else None)
        window = c.int("sliding_window", default=None)
        for kind in layer_types(c, layers, default=[FULL] * layers):
            if kind not in (FULL, SLIDING) or (kind == SLIDING and window is None):
                raise ConfigError(f"{c.label}: layer type {kind!r} needs what this reader does not have",
                                  hint="full_attention, or sliding_attention with sliding_window")
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    experts = c.int("n_routed_experts", "num_experts", default=0, minimum=0)
    n_moe = sum(_dense_or_sparse(c, layers)) if experts else 0
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers - n_moe)
    moe = None
    if n_moe:
        width = c.int("moe_intermediate_size")
        shared = c.int("n_shared_experts", "num_shared_experts", default=0, minimum=0)
        p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
        p.dense_mlp("layers.mlp.shared_experts", width * shared, n_moe if shared else 0)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=shared,
                      shared_expert_intermediate_size=width * shared, num_moe_layers=n_moe,
                      num_dense_layers=layers - n_moe)
    mtp = c.int("num_nextn_predict_layers", default=0, minimum=0)
    if mtp and model_type == "deepseek_v32" and n_moe:
        _deepseek_mtp(p, c, model_type, mtp, vocab)
    elif mtp:
        p.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; transformers skips them "
                       "(_keys_to_ignore_on_load_unexpected), so they are not counted")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  v_head_dim=v_head_dim, intermediate=intermediate, tied=tied, moe=moe, mla=mla, mtp=mtp)


def _deepseek_mtp(p: Parts, c: ConfigReader, model_type: str, mtp: int, vocab: int) -> None:
    """DeepSeek's multi-token-prediction modules, as for DeepSeek-V3 in families.py (DeepSeek-V3's
    inference/model.py and the checkpoint's last layer): an embedding copy, enorm, hnorm, eh_proj (2h -> h),
    one MoE decoder layer (with its indexer) and a shared head. In the checkpoint, not loaded by transformers
    or by engines without speculative decoding."""
    h = p.hidden
    one_layer = {**c.raw, "num_hidden_layers": 1, "mlp_layer_types": ["sparse"], "indexer_types": ["full"],
                 "num_nextn_predict_layers": 0}
    block = deepseek_moe(ConfigReader(one_layer, label=c.label), model_type)
    for g in block.tensors:
        if g.name.startswith("layers."):
            p.lay.add(f"mtp.{g.name}", g.shape, g.role, g.count * mtp, loaded=False)
    p.lay.add("mtp.embed_tokens.weight", (vocab, h), R.EMBEDDING, mtp, loaded=False)
    p.lay.norm("mtp.enorm", h, mtp, loaded=False)
    p.lay.norm("mtp.hnorm", h, mtp, loaded=False)
    p.lay.add("mtp.eh_proj.weight", (h, 2 * h), R.OTHER, mtp, loaded=False)
    p.lay.norm("mtp.shared_head.norm", h, mtp, loaded=False)
    p.lay.add("mtp.shared_head.head.weight", (vocab, h), R.LM_HEAD, mtp, loaded=False)
    p.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; engines load them only for "
                   "speculative decoding, so weights leave them out")


# ---- Mamba hybrids: Jamba, Falcon-H1 ------------------------------------------------------------------------


def jamba(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_jamba.py: attention on layers i % attn_layer_period == attn_layer_offset, Mamba elsewhere;
    MoE feed-forward (router without bias, fused experts) on i % expert_layer_period == expert_layer_offset,
    a dense gated MLP elsewhere; input_layernorm and pre_ff_layernorm per layer, final_layernorm."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c, config_head_dim=False)
    tied = c.bool("tie_word_embeddings", default=False)
    period, offset = c.int("attn_layer_period"), c.int("attn_layer_offset", minimum=0)
    e_period, e_offset = c.int("expert_layer_period"), c.int("expert_layer_offset", minimum=0)
    attn = [i % period == offset for i in range(layers)]
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", sum(attn), heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    recurrent, conv = mamba1(p, "layers.mamba", layers - sum(attn), inner_norms=True)
    for is_attn in attn:
        if is_attn:
            p.attention_cache(FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
        else:
            p.state_cache("mamba", recurrent=recurrent, conv=conv)
    experts = c.int("num_experts", default=1)
    n_moe = sum(1 for i in range(layers) if i % e_period == e_offset) if experts > 1 else 0
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.feed_forward", intermediate, layers - n_moe)
    if n_moe:
        p.lay.add("layers.feed_forward.router.weight", (experts, hidden), R.ROUTER, n_moe)
        p.lay.add("layers.feed_forward.experts.gate_up_proj", (experts, 2 * intermediate, hidden),
                  R.EXPERT_LINEAR, n_moe)
        p.lay.add("layers.feed_forward.experts.down_proj", (experts, hidden, intermediate), R.EXPERT_LINEAR, n_moe)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                  expert_intermediate_size=intermediate, num_moe_layers=n_moe,
                  num_dense_layers=layers - n_moe) if n_moe else None
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, moe=moe)


def falcon_h1(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_falcon_h1.py: every layer runs attention and a Mamba-2 mixer side by side (its cache layer
    holds both: cache_utils.py LinearAttentionAndFullAttentionLayer), then a gated MLP. The mixer's width is
    mamba_d_ssm, or mamba_expand x hidden; its gated RMSNorm exists only with mamba_rms_norm; out_proj's
    bias is projectors_bias."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    inner = c.int("mamba_d_ssm", default=None) or c.int("mamba_expand") * hidden
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    recurrent, conv = mamba2(p, "layers.mamba", layers, inner=inner, gated_norm=c.bool("mamba_rms_norm", default=False),
                             out_bias=c.bool("projectors_bias", default=False))
    for _ in range(layers):
        p.caches.append(LayerCache(kind="hybrid", mixer="attention+mamba2", kv_heads=kv_heads, key_dim=head_dim,
                                   value_dim=head_dim, recurrent_elems=recurrent, conv_elems=conv,
                                   conv_kernel=p.conv_kernel, recurrent_bytes=p.recurrent_bytes))
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.feed_forward", intermediate, layers, bias=c.bool("mlp_bias", default=False))
    p.lay.norm("layers.norms", hidden, 2 * layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


# ---- Llama 4: chunked attention ---------------------------------------------------------------------------


def llama4_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_llama4.py: layers with RoPE attend within chunks of attention_chunk_size tokens, every
    no_rope_layer_interval-th layer attends globally without RoPE (configuration_llama4.py builds
    layer_types from no_rope_layers when absent); the qk norm is weightless. MoE layers (moe_layers, or every
    interleave_moe_layer_step-th) have a router, fused experts (gate_up_proj [E, h, 2I], down_proj [E, I, h])
    and a shared expert of intermediate_size; the other layers a dense MLP of intermediate_size_mlp.
    transformers caches a chunked layer like a sliding one of attention_chunk_size tokens
    (cache_utils.py get_layer_types_and_kwargs)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    chunk = c.int("attention_chunk_size", default=None)
    interval = c.int("no_rope_layer_interval", default=4)
    no_rope = c.list("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(layers)]
    default_kinds = ["chunked_attention" if flag and chunk else FULL for flag in no_rope[:layers]]
    kinds = layer_types(c, layers, default=default_kinds)
    step = c.int("interleave_moe_layer_step", default=1)
    moe_layers = set(c.list("moe_layers") or range(step - 1, layers, step))
    n_moe = sum(1 for i in range(layers) if i in moe_layers)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    for kind in kinds:
        if kind == "chunked_attention" and chunk is None:
            raise ConfigError(f"{c.label}: layer_types names chunked layers but attention_chunk_size is unset")
        chunked = kind == "chunked_attention"
        p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                          window=chunk if chunked else None, chunked=chunked)
    experts, width = c.int("num_local_experts"), c.int("intermediate_size")
    p.lay.add("layers.feed_forward.router.weight", (experts, hidden), R.ROUTER, n_moe)
    p.lay.add("layers.feed_forward.experts.gate_up_proj", (experts, hidden, 2 * width), R.EXPERT_LINEAR, n_moe)
    p.lay.add("layers.feed_forward.experts.down_proj", (experts, width, hidden), R.EXPERT_LINEAR, n_moe)
    p.dense_mlp("layers.feed_forward.shared_expert", width, n_moe)
    dense_width = c.int("intermediate_size_mlp", default=width)
    p.dense_mlp("layers.feed_forward", dense_width, layers - n_moe)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"), expert_intermediate_size=width,
                  num_shared_experts=1, shared_expert_intermediate_size=width, num_moe_layers=n_moe,
                  num_dense_layers=layers - n_moe) if n_moe else None
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=dense_width, tied=tied, moe=moe)


# ---- Nemotron-H: one mixer per layer ---------------------------------------------------------------------

# configuration_nemotron_h.py _pattern_to_list: the characters of hybrid_override_pattern
_NEMOTRON_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}


def nemotron_h(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_nemotron_h.py: each layer is one norm and one mixer, named by layers_block_type (or the
    legacy hybrid_override_pattern; its length is the layer count): a Mamba-2 mixer (linear_attention), an
    attention (full_attention), a plain MLP (mlp: up_proj / down_proj, relu2) or an MoE (moe: router with the
    e_score_correction_bias buffer, non-gated fused experts up_proj [E, I, d] / down_proj [E, d, I] where d is
    moe_latent_size behind fc1/fc2_latent_proj when set, shared experts). MLP and MoE layers cache nothing
    (cache_utils.py: DummyLayer)."""
    hidden, vocab = c.int("hidden_size"), c.int("vocab_size")
    kinds = c.list("layers_block_type", "layer_types")
    if kinds is None:
        pattern = c.str("hybrid_override_pattern")
        if pattern is None or any(ch not in _NEMOTRON_PATTERN for ch in pattern):
            raise ConfigError(f"{c.label}: needs layers_block_type or a hybrid_override_pattern of M, *, - and E",
                              hint=f"got {pattern!r}")
        kinds = [_NEMOTRON_PATTERN[ch] for ch in pattern]
    unknown = sorted(set(kinds) - set(_NEMOTRON_PATTERN.values()))
    if unknown or not kinds:
        raise ConfigError(f"{c.label}: unknown layer kinds {unknown} in layers_block_type")
    layers = len(kinds)
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads)
    tied = c.bool("tie_word_embeddings", default=False)
    mlp_bias = c.bool("mlp_bias", default=False)
    p = Parts(c, hidden)
    p.lay.add("embeddings.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.norm("norm_f", hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.lay.norm("layers.norm", hidden, layers)
    count = {k: kinds.count(k) for k in _NEMOTRON_PATTERN.values()}
    inner = c.int("mamba_num_heads") * c.int("mamba_head_dim")
    # configuration_nemotron_h.py: chunk_size defaults to 128 (256 in the other Mamba-2 configs)
    recurrent, conv = mamba2(p, "layers.mixer", count["linear_attention"], inner=inner, gated_norm=True,
                             chunk_default=128)
    p.gqa("layers.mixer", count["full_attention"], heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    intermediate = c.int("intermediate_size", default=0, minimum=0)
    for name, shape in (("up_proj", (intermediate, hidden)), ("down_proj", (hidden, intermediate))):
        p.lay.linear(f"layers.mixer.{name}", *shape, count["mlp"], bias=mlp_bias)
    moe = None
    n_moe = count["moe"]
    if n_moe:
        experts, width = c.int("n_routed_experts"), c.int("moe_intermediate_size")
        latent = c.int("moe_latent_size", default=None)
        d = latent or hidden
        p.lay.add("layers.mixer.gate.weight", (experts, hidden), R.ROUTER, n_moe)
        p.lay.add("layers.mixer.gate.e_score_correction_bias", (experts,), R.ROUTER, n_moe)
        p.lay.add("layers.mixer.experts.up_proj", (experts, width, d), R.EXPERT_LINEAR, n_moe)
        p.lay.add("layers.mixer.experts.down_proj", (experts, d, width), R.EXPERT_LINEAR, n_moe)
        if latent:
            p.lay.linear("layers.mixer.fc1_latent_proj", latent, hidden, n_moe, bias=mlp_bias)
            p.lay.linear("layers.mixer.fc2_latent_proj", hidden, latent, n_moe, bias=mlp_bias)
        shared = c.int("moe_shared_expert_intermediate_size", default=0, minimum=0)
        if c.int("n_shared_experts", default=1, minimum=0) and shared:
            p.lay.linear("layers.mixer.shared_experts.up_proj", shared, hidden, n_moe, bias=mlp_bias)
            p.lay.linear("layers.mixer.shared_experts.down_proj", hidden, shared, n_moe, bias=mlp_bias)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=1 if shared else 0,
                      shared_expert_intermediate_size=shared, num_moe_layers=n_moe,
                      num_dense_layers=layers - n_moe)
    for kind in kinds:
        if kind == "linear_attention":
            p.state_cache("mamba2", recurrent=recurrent, conv=conv)
        elif kind == "full_attention":
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
        else:
            p.caches.append(LayerCache(kind="none", mixer=kind))
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate or (moe.expert_intermediate_size if moe else 1), tied=tied, moe=moe,
                  act=c.str("mlp_hidden_act", default="relu2"), gated_ffn=False)


# ---- LFM2: short convolutions ----------------------------------------------------------------------------


def _lfm2_ffn_width(c: ConfigReader) -> int:
    """modeling_lfm2.py Lfm2MLP: with block_auto_adjust_ff_dim, int(2/3 x intermediate_size), times
    block_ffn_dim_multiplier, rounded up to block_multiple_of."""
    width = c.int("intermediate_size")
    if c.bool("block_auto_adjust_ff_dim", default=True):
        width = int(2 * width / 3)
        multiplier = c.float("block_ffn_dim_multiplier", default=None)
        if multiplier is not None:
            width = int(multiplier * width)
            step = c.int("block_multiple_of", default=256)
            width = step * ((width + step - 1) // step)
    return width


def lfm2(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_lfm2.py / modeling_lfm2_moe.py: ``layer_types`` of conv (a gated short convolution:
    in_proj to 3 h, a depthwise conv of conv_L_cache taps, out_proj, biases with conv_bias) and
    full_attention (q/k/v/out_proj with per-head q_layernorm / k_layernorm); w1/w3/w2 feed-forward
    (lfm2), or dense for the first num_dense_layers and MoE after them (lfm2_moe: router, the
    expert_bias buffer with use_expert_bias, fused experts); operator_norm and ffn_norm per layer, the
    final norm is embedding_norm. A conv layer keeps [h, conv_L_cache] per sequence (cache_utils.py
    LinearAttentionLayer). lfm3 (modeling_lfm3.py) adds sliding-attention layers, head_dim from the
    config, a sigmoid gate per head (g_proj, use_attention_gate), post-norms (use_sandwich_norm) and an MLP of
    intermediate_size as given."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads) if model_type == "lfm3" else hidden // heads
    tied = c.bool("tie_word_embeddings", "tie_embedding", default=True)
    idxs = c.list("full_attn_idxs")
    default = None if idxs is None else [FULL if i in idxs else "conv" for i in range(layers)]
    kinds = layer_types(c, layers, default=default)
    if set(kinds) - {FULL, SLIDING, "conv"}:
        raise ConfigError(f"{c.label}: layer_types may name only conv, full_attention and sliding_attention",
                          hint=f"got {kinds}")
    window = c.int("sliding_window", default=None) if SLIDING in kinds else None
    n_attn = kinds.count(FULL) + kinds.count(SLIDING)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.norm("embedding_norm", hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.gqa("layers.self_attn", n_attn, heads=heads, kv_heads=kv_heads, head_dim=head_dim, qk_norm="head")
    if c.bool("use_attention_gate", default=False):
        p.lay.linear("layers.self_attn.g_proj", heads, hidden, n_attn)
    if c.bool("use_sandwich_norm", default=False):
        p.lay.norm("layers.post_norms", hidden, 2 * layers)
    kernel, bias = c.int("conv_L_cache"), c.bool("conv_bias", default=False)
    n_conv = layers - n_attn
    p.lay.add("layers.conv.conv.weight", (hidden, 1, kernel), R.OTHER, n_conv)
    if bias:
        p.lay.add("layers.conv.conv.bias", (hidden,), R.BIAS, n_conv)
    p.lay.linear("layers.conv.in_proj", 3 * hidden, hidden, n_conv, bias=bias)
    p.lay.linear("layers.conv.out_proj", hidden, hidden, n_conv, bias=bias)
    for kind in kinds:
        if kind == SLIDING and window is None:
            raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
        if kind in (FULL, SLIDING):
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
        else:
            p.state_cache("conv", recurrent=0, conv=hidden * kernel, kernel=kernel)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = None
    experts = c.int("num_experts", default=0, minimum=0) if model_type == "lfm2_moe" else 0
    if experts:
        dense = min(layers, c.int("num_dense_layers", default=0, minimum=0))
        width = c.int("moe_intermediate_size")
        intermediate = c.int("intermediate_size")
        p.dense_mlp("layers.feed_forward", intermediate, dense)
        p.experts("layers.feed_forward", layers - dense, experts=experts, width=width)
        if c.bool("use_expert_bias", default=True):
            p.lay.add("layers.feed_forward.expert_bias", (experts,), R.ROUTER, layers - dense)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                      expert_intermediate_size=width, num_moe_layers=layers - dense, num_dense_layers=dense)
    else:
        intermediate = c.int("intermediate_size") if model_type == "lfm3" else _lfm2_ffn_width(c)
        p.dense_mlp("layers.feed_forward", intermediate, layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, moe=moe)


# ---- Kimi Linear: Kimi delta attention with MLA ------------------------------------------------------------


def mla_and_kda_caches(p: Parts, kinds: list[str], mla: MlaSpec, *, k_heads: int, head_dim: int, width: int,
                       kernel: int) -> None:
    """The caches of a model mixing MLA attention and Kimi delta attention (KDA) layers: the latent and rotary
    key per token on attention layers; per sequence on KDA layers a [heads, head_dim, head_dim] recurrent state
    and the short convolution's state over q, k and v (3 x width channels, ``kernel`` columns)."""
    for kind in kinds:
        if kind == FULL:
            p.attention_cache(kind, kv_heads=1, key_dim=mla.kv_lora_rank, value_dim=mla.qk_rope_head_dim)
        else:
            p.state_cache("kda", recurrent=k_heads * head_dim * head_dim, conv=3 * width * kernel, kernel=kernel)


def kimi_style_moe(p: Parts, c: ConfigReader, sparse: list[bool]) -> tuple[int, MoeSpec | None]:
    """The feed-forward of a Kimi-Linear-style decoder: a dense MLP on the layers ``sparse`` marks False; on the
    others routed experts with a score-correction bias plus shared experts of the experts' width. Returns the
    dense width and the MoE description (None without MoE layers)."""
    layers, n_moe = len(sparse), sum(sparse)
    experts, moe_width = c.int("num_experts", "n_routed_experts"), c.int("moe_intermediate_size")
    shared = c.int("num_shared_experts", "n_shared_experts", default=0, minimum=0)
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers - n_moe)
    p.experts("layers.mlp", n_moe, experts=experts, width=moe_width, score_bias=True)
    p.dense_mlp("layers.mlp.shared_experts", moe_width * shared, n_moe if shared else 0)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_token", "num_experts_per_tok"),
                  expert_intermediate_size=moe_width, num_shared_experts=shared,
                  shared_expert_intermediate_size=moe_width * shared, num_moe_layers=n_moe,
                  num_dense_layers=layers - n_moe) if n_moe else None
    return intermediate, moe


def _kimi_layer_types(c: ConfigReader, layers: int) -> list[str]:
    """configuration_kimi_linear.py: layer_types, else the checkpoint's linear_attn_config (1-indexed
    full_attn_layers / kda_layers), else full attention on layers 4, 8, ... and KDA elsewhere."""
    cfg = c.raw.get("linear_attn_config")
    if c.list("layer_types") is None and isinstance(cfg, dict) and "full_attn_layers" in cfg:
        full = set(cfg["full_attn_layers"])
        return layer_types(c, layers, default=[FULL if i + 1 in full else "linear_attention" for i in range(layers)])
    return layer_types(c, layers, default=[FULL if i and i % 4 == 0 else "linear_attention" for i in range(layers)])


def kimi_linear(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_kimi_linear.py: Kimi delta attention (KDA) layers: q/k/v_proj to heads x d, a depthwise
    conv over q, k and v, the forget gate (f_a_proj, f_b_proj, dt_bias [heads x d], A_log per head),
    b_proj, the output gate (g_a_proj, g_b_proj), a gated RMSNorm o_norm of d, o_proj; full-attention
    layers are MLA without q compression. DeepSeek-V3-style MoE after the dense first layers. A KDA layer
    keeps [3 heads d, kernel] of conv state and [heads, d, d] of recurrent state per sequence."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    tied = c.bool("tie_word_embeddings", default=False)
    cfg = c.raw.get("linear_attn_config") if isinstance(c.raw.get("linear_attn_config"), dict) else {}
    lin = ConfigReader({**c.raw, **{k: v for k, v in (("linear_head_dim", cfg.get("head_dim")),
                                                       ("linear_num_heads", cfg.get("num_heads")),
                                                       ("linear_conv_kernel_dim", cfg.get("short_conv_kernel_size")))
                                    if v is not None}}, label=c.label)
    d, k_heads, kernel = lin.int("linear_head_dim"), lin.int("linear_num_heads"), lin.int("linear_conv_kernel_dim")
    kinds = _kimi_layer_types(c, layers)
    n_full = kinds.count(FULL)
    n_kda = layers - n_full
    mla = _mla(c)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    mla_attention(p, "layers.self_attn", n_full, mla, heads, bias=c.bool("attention_bias", default=False))
    lay, width = p.lay, k_heads * d
    for name in ("q_proj", "k_proj", "v_proj"):
        lay.linear(f"layers.self_attn.{name}", width, hidden, n_kda)
    lay.add("layers.self_attn.conv1d.weight", (3 * width, 1, kernel), R.OTHER, n_kda)
    lay.linear("layers.self_attn.forget_gate.f_a_proj", d, hidden, n_kda)
    lay.linear("layers.self_attn.forget_gate.f_b_proj", width, d, n_kda)
    lay.add("layers.self_attn.forget_gate.dt_bias", (width,), R.OTHER, n_kda)
    lay.add("layers.self_attn.forget_gate.A_log", (1, 1, k_heads, 1), R.OTHER, n_kda)
    lay.linear("layers.self_attn.b_proj", k_heads, hidden, n_kda)
    lay.linear("layers.self_attn.g_a_proj", d, hidden, n_kda)
    lay.linear("layers.self_attn.g_b_proj", width, d, n_kda)
    lay.norm("layers.self_attn.o_norm", d, n_kda)
    lay.linear("layers.self_attn.o_proj", hidden, width, n_kda)
    mla_and_kda_caches(p, kinds, mla, k_heads=k_heads, head_dim=d, width=width, kernel=kernel)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    sparse = _dense_or_sparse(c, layers) if c.list("mlp_layer_types") is not None else \
        [i >= c.int("first_k_dense_replace", default=1, minimum=0) for i in range(layers)]
    intermediate, moe = kimi_style_moe(p, c, sparse)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads,
                  head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim,
                  intermediate=intermediate, tied=tied, moe=moe, mla=mla)


# ---- Bamba, Granite 4.0 hybrid: Mamba-2 with some attention layers -----------------------------------------

_MAMBA_KINDS = {"linear_attention": "linear_attention", "mamba": "linear_attention",
                "full_attention": FULL, "attention": FULL}


def _mamba_attention_kinds(c: ConfigReader, layers: int) -> list[str]:
    """bamba: attn_layer_indices (configuration_bamba.py layers_block_type); granitemoehybrid: layer_types
    (configuration_granitemoehybrid.py, Mamba on every layer by default); legacy names mamba / attention."""
    indices = c.list("attn_layer_indices")
    if c.list("layer_types", "layers_block_type") is None:
        chosen = set(indices or [])
        return [FULL if i in chosen else "linear_attention" for i in range(layers)]
    kinds = c.list("layer_types", "layers_block_type") or []
    if len(kinds) < layers or any(k not in _MAMBA_KINDS for k in kinds[:layers]):
        raise ConfigError(f"{c.label}: layer_types must name mamba / linear_attention or attention / full_attention "
                          f"for each of the {layers} layers", hint=f"got {kinds!r}")
    return [_MAMBA_KINDS[k] for k in kinds[:layers]]


def mamba2_hybrid(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_bamba.py and modeling_granitemoehybrid.py: per layer a Mamba-2 mixer (width mamba_expand x
    hidden, gated RMSNorm) or an attention; bamba then a gated MLP (input_layernorm, pre_ff_layernorm,
    final_layernorm); granitemoehybrid an MoE (block_sparse_moe: router, fused experts) when
    num_local_experts > 0 plus a shared gated MLP (shared_mlp: input_linear to 2 x shared_intermediate_size,
    output_linear), with input_layernorm, post_attention_layernorm and norm."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c, config_head_dim=False)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = _mamba_attention_kinds(c, layers)
    n_attn = kinds.count(FULL)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", n_attn, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    recurrent, conv = mamba2(p, "layers.mamba", layers - n_attn, inner=c.int("mamba_expand") * hidden,
                             gated_norm=True)
    for kind in kinds:
        if kind == FULL:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
        else:
            p.state_cache("mamba2", recurrent=recurrent, conv=conv)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = None
    if model_type == "bamba":
        intermediate = c.int("intermediate_size")
        p.dense_mlp("layers.feed_forward", intermediate, layers, bias=c.bool("mlp_bias", default=False))
    else:
        experts = c.int("num_local_experts", default=0, minimum=0)
        intermediate = c.int("intermediate_size")
        if experts:
            p.lay.add("layers.block_sparse_moe.router.weight", (experts, hidden), R.ROUTER, layers)
            p.lay.add("layers.block_sparse_moe.experts.gate_up_proj", (experts, 2 * intermediate, hidden),
                      R.EXPERT_LINEAR, layers)
            p.lay.add("layers.block_sparse_moe.experts.down_proj", (experts, hidden, intermediate),
                      R.EXPERT_LINEAR, layers)
        shared = c.int("shared_intermediate_size")
        p.lay.linear("layers.shared_mlp.input_linear", 2 * shared, hidden, layers)
        p.lay.linear("layers.shared_mlp.output_linear", hidden, shared, layers)
        if experts:
            moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                          expert_intermediate_size=intermediate, num_shared_experts=1,
                          shared_expert_intermediate_size=shared, num_moe_layers=layers)
        else:
            intermediate = shared
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, moe=moe)


# ---- MiniMax: lightning attention ---------------------------------------------------------------------------


def minimax(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_minimax.py: ``layer_types`` of linear_attention (lightning attention: qkv_proj, an RMSNorm
    over heads x d, out_proj, output_gate; its state, [heads, d, d] per sequence, is kept in
    MiniMaxCache.linear_cache) and full_attention (q/k/v/o, sliding_window when set); a Mixtral-style MoE
    (router, fused experts of intermediate_size) on every layer."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers)
    window = c.int("sliding_window", default=None)
    n_linear = kinds.count("linear_attention")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers - n_linear, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    width = heads * head_dim
    p.lay.linear("layers.self_attn.qkv_proj", 3 * width, hidden, n_linear)
    p.lay.norm("layers.self_attn.norm", width, n_linear)
    p.lay.linear("layers.self_attn.out_proj", hidden, width, n_linear)
    p.lay.linear("layers.self_attn.output_gate", width, hidden, n_linear)
    for kind in kinds:
        if kind == "linear_attention":
            p.state_cache(kind, recurrent=heads * head_dim * head_dim, conv=0, kernel=0)
        elif kind in (FULL, SLIDING):
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                              window=window if kind == SLIDING else None)
        else:
            raise ConfigError(f"{c.label}: unknown layer type {kind!r} in layer_types")
    experts, width_e = c.int("num_local_experts"), c.int("intermediate_size")
    p.experts("layers.mlp", layers, experts=experts, width=width_e)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"),
                  expert_intermediate_size=width_e, num_moe_layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=width_e, tied=tied, moe=moe)


# ---- ERNIE 4.5 MoE -------------------------------------------------------------------------------------------


def ernie4_5_moe(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_ernie4_5_moe.py: q/k/v/o and MLPs with use_bias; an MoE on layers i with (i + 1) %
    moe_layer_interval == 0 between moe_layer_start_index and moe_layer_end_index (-1: the last layer,
    configuration_ernie4_5_moe.py), else a dense MLP; router weight plus a [1, E] e_score_correction_bias
    parameter (moe_statics), fused experts, shared experts of moe_num_shared_experts x moe_intermediate_size.
    Tied embeddings by default."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=True)
    bias = c.bool("use_bias", default=False)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias)
    for _ in range(layers):
        p.attention_cache(FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    experts = c.int("moe_num_experts", default=0, minimum=0)
    start = c.int("moe_layer_start_index", default=1, minimum=0)
    end_raw = c.raw.get("moe_layer_end_index", -1)
    end = layers - 1 if end_raw in (-1, None) else c.int("moe_layer_end_index", minimum=0)
    interval = c.int("moe_layer_interval", default=1)
    n_moe = sum(1 for i in range(layers) if (i + 1) % interval == 0 and start <= i <= end) if experts else 0
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers - n_moe, bias=bias)
    moe = None
    if n_moe:
        width = c.int("moe_intermediate_size")
        shared = c.int("moe_num_shared_experts", default=0, minimum=0)
        p.experts("layers.mlp", n_moe, experts=experts, width=width)
        p.lay.add("layers.mlp.gate.moe_statics.e_score_correction_bias", (1, experts), R.ROUTER, n_moe)
        p.dense_mlp("layers.mlp.shared_experts", width * shared, n_moe if shared else 0, bias=bias)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("moe_k", "num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=shared,
                      shared_expert_intermediate_size=width * shared, num_moe_layers=n_moe,
                      num_dense_layers=layers - n_moe)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, moe=moe)


# ---- MiMo-V2-Flash: sliding layers with their own head counts ---------------------------------------------


def mimo_v2_flash(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_mimo_v2_flash.py MiMoV2FlashAttention: ``layer_types`` of full and sliding attention; a
    sliding layer has twice num_key_value_heads and a learned sink per query head; keys of head_dim, values
    of v_head_dim, o_proj without bias. MoE (router with the e_score_correction_bias buffer, fused experts,
    no shared expert) where mlp_layer_types says sparse."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, 2 * kv_heads)
    head_dim = c.int("head_dim", default=hidden // heads)
    v_dim = c.int("v_head_dim", default=head_dim)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    # configuration_mimo_v2_flash.py: without layer_types, layer 0 and every 6th layer are full attention
    # (the Hub config's hybrid_layer_pattern is not read); sliding_window_size + 1 overrides sliding_window
    kinds = layer_types(c, layers, default=[FULL if i == 0 or not (i + 1) % 6 else SLIDING for i in range(layers)])
    size = c.int("sliding_window_size", default=None)
    window = size + 1 if size is not None else c.int("sliding_window", default=None)
    n_swa = kinds.count(SLIDING)
    if n_swa and window is None:
        raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers - n_swa, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
          o_bias=False, v_head_dim=v_dim)
    p.gqa("layers.self_attn", n_swa, heads=heads, kv_heads=2 * kv_heads, head_dim=head_dim, bias=bias,
          o_bias=False, v_head_dim=v_dim, sinks=True)
    for kind in kinds:
        swa = kind == SLIDING
        p.attention_cache(kind, kv_heads=2 * kv_heads if swa else kv_heads, key_dim=head_dim, value_dim=v_dim,
                          window=window if swa else None)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    # configuration_mimo_v2_flash.py: without mlp_layer_types the first layer is dense, the others MoE
    n_moe = sum(_dense_or_sparse(c, layers)) if c.list("mlp_layer_types") is not None else layers - 1
    experts, width = c.int("n_routed_experts"), c.int("moe_intermediate_size")
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers - n_moe)
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
    moe = MoeSpec(num_experts=experts, experts_per_token=c.int("num_experts_per_tok"), expert_intermediate_size=width,
                  num_moe_layers=n_moe, num_dense_layers=layers - n_moe) if n_moe else None
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  v_head_dim=v_dim, intermediate=intermediate, tied=tied, moe=moe)


# ---- Gemma 4: per-layer head dims, per-layer embeddings, KV sharing --------------------------------------


def _per_layer_overrides(c: ConfigReader, kinds: list[str]) -> dict[int, dict]:
    """configuration_gemma4.py: per_layer_config ({layer index: overrides}), else head_dim =
    global_head_dim (512) and num_key_value_heads = num_global_key_value_heads on the full-attention
    layers."""
    raw = c.raw.get("per_layer_config")
    if isinstance(raw, dict):
        out: dict[int, dict] = {}
        for key, value in raw.items():
            if not str(key).isdigit() or not isinstance(value, dict):
                raise ConfigError(f"{c.label}: per_layer_config must map layer indices to settings",
                                  hint=f"got {key!r}: {value!r}")
            out[int(key)] = value
        return out
    overrides = {"head_dim": c.int("global_head_dim", default=512)}
    if c.has("num_global_key_value_heads") and c.bool("attention_k_eq_v", default=True):
        overrides["num_key_value_heads"] = c.int("num_global_key_value_heads")
    return {i: overrides for i, kind in enumerate(kinds) if kind == FULL}


def gemma4_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gemma4.py Gemma4TextModel: sliding and full attention layers with their own head_dim and
    K/V heads (per_layer_config); q_norm, k_norm (v_norm has no weight); with attention_k_eq_v the full
    layers have no v_proj. The last num_kv_shared_layers layers reuse earlier layers' K/V: no k/v weights,
    nothing cached. Four norms per layer and a layer_scalar buffer; per-layer embeddings when
    hidden_size_per_layer_input is set (embed_tokens_per_layer [V, layers x d], per_layer_model_projection,
    per_layer_projection_norm; per layer per_layer_input_gate, per_layer_projection, post_per_layer_input_norm);
    a gated MLP, twice as wide on shared layers with use_double_wide_mlp; with enable_moe_block, a router
    (proj, scale, per_expert_scale), fused experts and three more norms beside it."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    head_dim = c.int("head_dim", default=hidden // heads)
    tied = c.bool("tie_word_embeddings", default=True)
    bias = c.bool("attention_bias", default=False)
    kinds = layer_types(c, layers, default=[FULL if (i + 1) % 6 == 0 else SLIDING for i in range(layers)])
    window = c.int("sliding_window", default=None)
    shared_from = layers - c.int("num_kv_shared_layers", default=0, minimum=0)
    overrides = _per_layer_overrides(c, kinds)
    k_eq_v = c.bool("attention_k_eq_v", default=False)
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    lay = p.lay
    for i, kind in enumerate(kinds):
        over = overrides.get(i, {})
        hd = over.get("head_dim", head_dim)
        kvh = over.get("num_key_value_heads", kv_heads)
        if not (isinstance(hd, int) and isinstance(kvh, int) and hd > 0 and kvh > 0 and heads % kvh == 0):
            raise ConfigError(f"{c.label}: per_layer_config of layer {i} gives head_dim {hd!r} and "
                              f"num_key_value_heads {kvh!r}")
        reuse = i >= shared_from
        lay.linear("layers.self_attn.q_proj", heads * hd, hidden, 1, bias=bias)
        lay.norm("layers.self_attn.q_norm", hd, 1)
        lay.linear("layers.self_attn.o_proj", hidden, heads * hd, 1, bias=bias)
        if reuse:
            p.caches.append(LayerCache(kind="none", mixer=f"{kind} (reuses an earlier layer's K/V)"))
            continue
        lay.norm("layers.self_attn.k_norm", hd, 1)
        lay.linear("layers.self_attn.k_proj", kvh * hd, hidden, 1, bias=bias)
        if not (k_eq_v and kind != SLIDING):
            lay.linear("layers.self_attn.v_proj", kvh * hd, hidden, 1, bias=bias)
        if kind == SLIDING and window is None:
            raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
        p.attention_cache(kind, kv_heads=kvh, key_dim=hd, value_dim=hd, window=window if kind == SLIDING else None)
    lay.norm("layers.norms", hidden, 4 * layers)
    lay.add("layers.layer_scalar", (1,), R.OTHER, layers)
    per_layer = c.int("hidden_size_per_layer_input", default=0, minimum=0)
    if per_layer:
        vocab_pl = c.int("vocab_size_per_layer_input", default=vocab)
        lay.add("embed_tokens_per_layer.weight", (vocab_pl, layers * per_layer), R.EMBEDDING)
        lay.linear("per_layer_model_projection", layers * per_layer, hidden, 1)
        lay.norm("per_layer_projection_norm", per_layer, 1)
        lay.linear("layers.per_layer_input_gate", per_layer, hidden, layers)
        lay.linear("layers.per_layer_projection", hidden, per_layer, layers)
        lay.norm("layers.post_per_layer_input_norm", hidden, layers)
    intermediate = c.int("intermediate_size")
    wide = layers - shared_from if c.bool("use_double_wide_mlp", default=False) else 0
    p.dense_mlp("layers.mlp", intermediate, layers - wide)
    p.dense_mlp("layers.mlp", 2 * intermediate, wide)
    moe = None
    if c.bool("enable_moe_block", default=False):
        experts, width = c.int("num_experts"), c.int("moe_intermediate_size")
        lay.linear("layers.router.proj", experts, hidden, layers)
        lay.add("layers.router.scale", (hidden,), R.ROUTER, layers)
        lay.add("layers.router.per_expert_scale", (experts,), R.ROUTER, layers)
        lay.add("layers.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, layers)
        lay.add("layers.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, layers)
        lay.norm("layers.moe_norms", hidden, 3 * layers)
        moe = MoeSpec(num_experts=experts, experts_per_token=c.int("top_k_experts", "num_experts_per_tok"),
                      expert_intermediate_size=width, num_shared_experts=1,
                      shared_expert_intermediate_size=intermediate, num_moe_layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, moe=moe,
                  act=c.str("hidden_activation", "hidden_act", default="gelu_pytorch_tanh"))


# ---- OLMo hybrid: gated DeltaNet with OLMo 2 attention --------------------------------------------------------


def olmo_hybrid(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_olmo_hybrid.py: ``layer_types`` of linear_attention (a gated DeltaNet with separate q/k/v,
    a/b and g projections, a depthwise conv over q, k and v without bias, dt_bias and A_log per value head,
    an o_norm of the value head width, o_proj; pre-norm: input_layernorm and post_attention_layernorm) and
    full_attention (OLMo 2: q_norm / k_norm over all heads, post-norms post_attention_layernorm and
    post_feedforward_layernorm); a gated MLP on every layer. A linear layer keeps [v_heads, k_dim, v_dim]
    and [conv_dim, kernel] per sequence."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers)
    n_lin = kinds.count("linear_attention")
    if n_lin + kinds.count(FULL) != layers:
        raise ConfigError(f"{c.label}: layer_types may name only linear_attention and full_attention")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    p.gqa("layers.self_attn", layers - n_lin, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False), qk_norm="full")
    v_heads, k_heads = c.int("linear_num_value_heads"), c.int("linear_num_key_heads")
    k_dim, v_dim, kernel = c.int("linear_key_head_dim"), c.int("linear_value_head_dim"), c.int("linear_conv_kernel_dim")
    key, value = k_heads * k_dim, v_heads * v_dim
    lay = p.lay
    for name, width in (("q_proj", key), ("k_proj", key), ("v_proj", value), ("a_proj", v_heads),
                        ("b_proj", v_heads), ("g_proj", value)):
        lay.linear(f"layers.linear_attn.{name}", width, hidden, n_lin)
    lay.add("layers.linear_attn.conv1d.weight", (2 * key + value, 1, kernel), R.OTHER, n_lin)
    lay.add("layers.linear_attn.dt_bias", (v_heads,), R.OTHER, n_lin)
    lay.add("layers.linear_attn.A_log", (v_heads,), R.OTHER, n_lin)
    lay.norm("layers.linear_attn.o_norm", v_dim, n_lin)
    lay.linear("layers.linear_attn.o_proj", hidden, value, n_lin)
    for kind in kinds:
        if kind == FULL:
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
        else:
            p.state_cache(kind, recurrent=v_heads * k_dim * v_dim, conv=(2 * key + value) * kernel, kernel=kernel)
    lay.norm("layers.norms", hidden, 2 * layers)
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


# ---- State-space models: Mamba, Mamba-2, Falcon Mamba -------------------------------------------------------


def mamba(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_mamba.py / modeling_falcon_mamba.py (Mamba mixers of intermediate_size, whose RMS norms in
    Falcon Mamba carry no weight) and modeling_mamba2.py (Mamba-2 mixers of num_heads x head_dim with a
    gated RMSNorm): backbone.embeddings, one norm per layer, norm_f; every layer keeps its SSM and conv
    state (cache_utils.py LinearAttentionLayer)."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=model_type != "mamba2")
    p = Parts(c, hidden)
    p.lay.add("backbone.embeddings.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.norm("backbone.layers.norm", hidden, layers)
    p.lay.norm("backbone.norm_f", hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    if model_type == "mamba2":
        keys = {"mamba_n_heads": "num_heads", "mamba_d_head": "head_dim", "mamba_d_state": "state_size",
                "mamba_d_conv": "conv_kernel", "mamba_n_groups": "n_groups", "mamba_proj_bias": "use_bias",
                "mamba_conv_bias": "use_conv_bias"}
        named = ConfigReader({**c.raw, **{k: c.raw.get(v) for k, v in keys.items()}}, label=c.label)
        p = Parts(named, hidden, lay=p.lay)
        inner = named.int("mamba_n_heads") * named.int("mamba_d_head")
        recurrent, conv = mamba2(p, "backbone.layers.mixer", layers, inner=inner, gated_norm=True)
        mixer = "mamba2"
    else:
        inner = c.int("intermediate_size", default=None) or c.int("expand") * hidden
        recurrent, conv = mamba1(p, "backbone.layers.mixer", layers, inner_norms=False, inner=inner)
        mixer = "mamba"
    for _ in range(layers):
        p.state_cache(mixer, recurrent=recurrent, conv=conv)
    # No attention: the head figures below only fill the ModelSpec (the cache comes from the LayerCaches);
    # the prefill activation terms, which model attention, read them and are approximate for this family.
    return finish(p, model_type, layers=layers, vocab=vocab, heads=1, kv_heads=1, head_dim=hidden,
                  intermediate=inner, tied=tied, gated_ffn=False)


# ---- Llama-style decoders with a plain (not gated) MLP -------------------------------------------------------

# model_type -> (norm weights per layer, final norm, LayerNorm biases, attention/MLP biases, per-head q/k
# norms, learned activation scalars per layer, MLP names); each from the family's modeling file.
_PLAIN_MLP = {
    # modeling_arcee.py: up_proj / down_proj with ReLU^2, two RMSNorms per layer
    "arcee": (2, True, False, False, False, 0, ("up_proj", "down_proj")),
    # modeling_apertus.py: xIELU with learned alpha_p / alpha_n, per-head q/k RMSNorms
    "apertus": (2, True, False, False, True, 2, ("up_proj", "down_proj")),
    "apertus1p5_text": (2, True, False, False, True, 2, ("up_proj", "down_proj")),
    # modeling_nanochat.py: RMSNorms without weights, fc1 / fc2 with ReLU^2
    "nanochat": (0, False, False, False, False, 0, ("fc1", "fc2")),
    # modeling_jais2.py: LayerNorms with bias, biases on every projection
    "jais2": (2, True, True, True, False, 0, ("up_proj", "down_proj")),
}


def plain_mlp_decoder(c: ConfigReader, model_type: str) -> ModelSpec:
    """Llama-style attention (q/k/v/o, full attention) with a two-matrix MLP; see ``_PLAIN_MLP``."""
    norms, final_norm, norm_bias, bias, qk_norm, act_params, (up, down) = _PLAIN_MLP[model_type]
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=bias)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    if final_norm:
        p.lay.norm("norm", hidden, 1, bias=norm_bias)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
          qk_norm="head" if qk_norm else None)
    for _ in range(layers):
        p.attention_cache(FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)
    p.lay.norm("layers.norms", hidden, norms * layers, bias=norm_bias)
    intermediate = c.int("intermediate_size")
    mlp_bias = c.bool("mlp_bias", default=bias)
    p.lay.linear(f"layers.mlp.{up}", intermediate, hidden, layers, bias=mlp_bias)
    p.lay.linear(f"layers.mlp.{down}", hidden, intermediate, layers, bias=mlp_bias)
    p.lay.add("layers.mlp.act_fn.alpha", (1,), R.OTHER, act_params * layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, gated_ffn=False)


# ---- families gpuplan does not know ------------------------------------------------------------------------

ATTENTION_KINDS = frozenset({FULL, SLIDING, "chunked_attention"})
STATE_KINDS = frozenset({"linear_attention", "mamba", "conv"})


def has_state_layers(raw: dict) -> bool:
    """Whether a config's ``layer_types`` names layers that are not attention (for the unknown-family path)."""
    kinds = raw.get("layer_types")
    return isinstance(kinds, list) and any(k not in ATTENTION_KINDS for k in kinds)


STATE_KEY_PREFIXES = ("mamba_", "linear_num_", "linear_key_", "linear_value_", "ssm_", "conv_L_cache",
                      "state_size", "time_step_rank")


def state_keys(raw: dict) -> list[str]:
    """Keys of a config that describe recurrent or state-space layers."""
    return sorted(k for k in raw if k.startswith(STATE_KEY_PREFIXES) and raw[k] is not None)


def _generic_state(p: Parts, kind: str) -> tuple[int, int, str]:
    """Parameters and per-sequence state of one kind of state layer, from the dims the config carries."""
    c = p.c
    if kind == "conv" and c.has("conv_L_cache"):
        kernel = c.int("conv_L_cache")
        p.conv_kernel = kernel
        p.lay.add("layers.conv.conv.weight", (p.hidden, 1, kernel), R.OTHER, 1)
        p.lay.linear("layers.conv.in_proj", 3 * p.hidden, p.hidden, 1)
        p.lay.linear("layers.conv.out_proj", p.hidden, p.hidden, 1)
        return 0, p.hidden * kernel, "an LFM2-style short convolution (conv_L_cache)"
    if kind in ("linear_attention", "mamba") and c.has("linear_num_value_heads"):
        recurrent, conv = gated_delta_net(p, "layers.linear_attn", 1)
        return recurrent, conv, "a Qwen3-Next-style gated DeltaNet (linear_* dims)"
    if kind in ("linear_attention", "mamba") and c.has("mamba_n_heads", "mamba_num_heads"):
        inner = c.int("mamba_n_heads", "mamba_num_heads") * c.int("mamba_d_head", "mamba_head_dim")
        recurrent, conv = mamba2(p, "layers.mamba", 1, inner=inner, gated_norm=True)
        return recurrent, conv, "a Mamba-2 mixer (mamba_* dims)"
    if kind in ("linear_attention", "mamba") and c.has("mamba_d_state"):
        recurrent, conv = mamba1(p, "layers.mamba", 1, inner_norms=False)
        return recurrent, conv, "a Mamba mixer (mamba_d_state, mamba_expand)"
    raise ConfigError(f"{c.label}: layer_types names {kind} layers, but the config carries none of the state dims "
                      "gpuplan knows (linear_num_value_heads..., mamba_n_heads..., mamba_d_state, conv_L_cache)",
                      hint="this family is not supported; its cache cannot be estimated from the config")


def generic_decoder(c: ConfigReader, model_type: str) -> ModelSpec:
    """An unknown family whose ``layer_types`` mixes attention and state layers. Attention layers are read as
    Llama-style grouped-query attention (sliding_window / attention_chunk_size for their spans), state layers
    by the dims the config carries; every layer gets a gated MLP of intermediate_size. The notes say which
    assumption was made for each kind."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers)
    unknown = sorted(set(kinds) - ATTENTION_KINDS - STATE_KINDS)
    if unknown:
        raise ConfigError(f"{c.label}: layer_types names layer kinds gpuplan does not know: {', '.join(unknown)}",
                          hint=f"known: {', '.join(sorted(ATTENTION_KINDS | STATE_KINDS))}")
    p = Parts(c, hidden)
    _embed_and_head(p, vocab, tied)
    assumed: dict[str, str] = {}
    for kind in kinds:
        if kind in ATTENTION_KINDS:
            p.gqa("layers.self_attn", 1, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
            window = None
            if kind != FULL:
                window = c.int("attention_chunk_size" if kind == "chunked_attention" else "sliding_window")
            p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim, window=window,
                              chunked=kind == "chunked_attention")
            assumed[kind] = "Llama-style grouped-query attention"
        else:
            recurrent, conv, what = _generic_state(p, kind)
            p.state_cache(kind, recurrent=recurrent, conv=conv)
            assumed[kind] = what
    intermediate = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", intermediate, layers)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    p.notes.append(f"model_type {model_type!r} is not known to gpuplan: estimated from layer_types, reading "
                   + "; ".join(f"{k} layers as {v}" for k, v in sorted(assumed.items()))
                   + ", each with a gated MLP of intermediate_size; the parameter count may differ from the "
                   "checkpoint")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied)


FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    "qwen3_next": qwen3_next,
    "qwen3_5_text": qwen3_next,
    "qwen3_5_moe_text": qwen3_next,
    "deepseek_v32": deepseek_moe,
    "glm_moe_dsa": deepseek_moe,
    "glm4_moe": deepseek_moe,
    "glm4_moe_lite": deepseek_moe,
    # families whose modules are those of DeepSeek-V2/V3 or GLM-4.5 (their modular_*.py build on them)
    "axk1": deepseek_moe,
    "sarvam_mla": deepseek_moe,
    "sarvam_moe": deepseek_moe,
    "param2moe": deepseek_moe,
    "minicpm3": deepseek_moe,
    "youtu": deepseek_moe,
    "exaone_moe": deepseek_moe,
    "hy_v3": deepseek_moe,
    "jamba": jamba,
    **dict.fromkeys(_PLAIN_MLP, plain_mlp_decoder),
    "mamba": mamba,
    "mamba2": mamba,
    "falcon_mamba": mamba,
    "olmo_hybrid": olmo_hybrid,
    "gemma4_text": gemma4_text,
    "gemma4_unified_text": gemma4_text,
    "mimo_v2_flash": mimo_v2_flash,
    "ernie4_5_moe": ernie4_5_moe,
    "minimax": minimax,
    "bamba": mamba2_hybrid,
    "granitemoehybrid": mamba2_hybrid,
    "kimi_linear": kimi_linear,
    "lfm2": lfm2,
    "lfm2_moe": lfm2,
    "lfm3": lfm2,
    "nemotron_h": nemotron_h,
    "llama4_text": llama4_text,
    "falcon_h1": falcon_h1,
}
