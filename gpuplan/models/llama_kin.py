"""Decoder families built from Llama's parts with modules of their own: extra norms, gated attention, MoE
blocks whose routers, shared experts and expert tensors are laid out their own way.

Each parser mirrors the module tree of the family's modeling file in transformers 5.25 (named at each
parser); tests/test_architectures.py replays the parameters transformers 5.25 builds from each family's
default config and the cache it holds after a forward. Routers' persistent buffers (e_score_correction_bias)
are counted: the checkpoints store them.
"""

from __future__ import annotations

from collections.abc import Callable

from gpuplan.errors import ConfigError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.hybrid import FULL, SLIDING, Parts, decoder_dims, finish, gemma4_text, layer_types
from gpuplan.models.spec import ModelSpec, MoeSpec, TensorGroup, TensorRole
from gpuplan.models.vision import phi4_multimodal_parameters

R = TensorRole


def _head(p: Parts, vocab: int, tied: bool) -> None:
    p.lay.add("embed_tokens.weight", (vocab, p.hidden), R.EMBEDDING)
    p.lay.norm("norm", p.hidden, 1)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, p.hidden), R.LM_HEAD)


def _attention_caches(p: Parts, kinds: list[str], *, kv_heads: int, head_dim: int, window: int | None,
                      indexer_dim: int = 0, indexed: str = "") -> None:
    """One cache per layer: full layers keep every token, sliding ones ``window`` (cache_utils.py
    DynamicSlidingWindowLayer); ``indexed`` names the layer kind that also caches an indexer key."""
    for kind in kinds:
        if kind == SLIDING and window is None:
            raise ConfigError(f"{p.c.label}: layer_types names sliding layers but sliding_window is unset")
        if kind not in (FULL, SLIDING, indexed or FULL):
            raise ConfigError(f"{p.c.label}: unknown layer type {kind!r} in layer_types")
        p.attention_cache(kind, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim,
                          window=window if kind == SLIDING else None,
                          indexer_dim=indexer_dim if indexed and kind == indexed else 0)


def _sparse_layers(c: ConfigReader, layers: int, default: list[bool]) -> list[bool]:
    """Which layers are MoE: ``mlp_layer_types`` ("dense" / "sparse") when the config lists them."""
    kinds = c.list("mlp_layer_types")
    if kinds is None:
        return default
    if len(kinds) < layers:
        raise ConfigError(f"{c.label}: mlp_layer_types has {len(kinds)} entries for {layers} layers")
    return [k == "sparse" for k in kinds[:layers]]


def _moe(c: ConfigReader, *, experts: int, per_token: int, width: int, n_moe: int, layers: int,
         shared_width: int = 0) -> MoeSpec | None:
    if not n_moe:
        return None
    return MoeSpec(num_experts=experts, experts_per_token=per_token, expert_intermediate_size=width,
                   num_shared_experts=1 if shared_width else 0, shared_expert_intermediate_size=shared_width,
                   num_moe_layers=n_moe, num_dense_layers=layers - n_moe)


def bitnet(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_bitnet.py: Llama's layout plus an RMSNorm before o_proj (attn_sub_norm, hidden) and one before
    down_proj (ffn_sub_norm, intermediate_size); untied head by default (configuration_bitnet.py)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    inner = c.int("intermediate_size")
    p = Parts(c, hidden)
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    p.lay.norm("layers.self_attn.attn_sub_norm", hidden, layers)
    p.dense_mlp("layers.mlp", inner, layers)
    p.lay.norm("layers.mlp.ffn_sub_norm", inner, layers)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    _attention_caches(p, [FULL] * layers, kv_heads=kv_heads, head_dim=head_dim, window=None)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, act=c.str("hidden_act", default="relu2"))


def modernbert_decoder(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_modernbert_decoder.py: tok_embeddings + a LayerNorm, q/k/v/Wo of hidden // heads, no
    attn_norm on layer 0 (nn.Identity), mlp.Wi of 2 x intermediate_size (GLU) and mlp.Wo, LayerNorms with
    norm_bias, final_norm, a prediction head (dense + norm) and a decoder tied to the embeddings with
    decoder_bias. Sliding layers span sliding_window = local_attention // 2 (configuration file)."""
    hidden, layers, heads, vocab = (c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads"),
                                    c.int("vocab_size"))
    if hidden % heads:
        raise ConfigError(f"{c.label}: hidden_size {hidden} is not divisible by {heads} heads")
    head_dim, inner = hidden // heads, c.int("intermediate_size")
    norm_bias, attn_bias = c.bool("norm_bias", default=False), c.bool("attention_bias", default=False)
    mlp_bias = c.bool("mlp_bias", default=False)
    tied = c.bool("tie_word_embeddings", default=True)
    local = c.int("local_attention", default=128)
    window = c.int("sliding_window", default=local // 2)
    kinds = layer_types(c, layers)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embeddings.tok_embeddings.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("embeddings.norm", hidden, 1, bias=norm_bias)
    lay.norm("layers.attn_norm", hidden, layers - 1, bias=norm_bias)
    for proj in ("q_proj", "k_proj", "v_proj", "Wo"):
        lay.linear(f"layers.attn.{proj}", hidden, hidden, layers, bias=attn_bias)
    lay.norm("layers.mlp_norm", hidden, layers, bias=norm_bias)
    lay.linear("layers.mlp.Wi", 2 * inner, hidden, layers, bias=mlp_bias)
    lay.linear("layers.mlp.Wo", hidden, inner, layers, bias=mlp_bias)
    lay.norm("final_norm", hidden, 1, bias=norm_bias)
    lay.linear("lm_head.dense", hidden, hidden, 1, bias=c.bool("classifier_bias", default=False))
    lay.norm("lm_head.norm", hidden, 1, bias=norm_bias)
    if not tied:
        lay.add("decoder.weight", (vocab, hidden), R.LM_HEAD)
    if c.bool("decoder_bias", default=True):
        lay.add("decoder.bias", (vocab,), R.BIAS)
    _attention_caches(p, kinds, kv_heads=heads, head_dim=head_dim, window=window)
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, act=c.str("hidden_activation", default="gelu"))
    return spec.model_copy(update={"norm_kind": "layer"})


def minicpm5_moe(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_minicpm5_moe.py: k/v/o and a q_gate_proj of 2 x heads x head_dim (query and its output gate),
    no q/k norms; MoE where mlp_layer_types says sparse (default: the first first_k_dense_replace = 1 layers
    dense, configuration_minicpm5_moe.py): router weight, its e_score_correction_bias buffer, fused experts,
    shared experts of moe_intermediate_size x n_shared_experts."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    p = Parts(c, hidden)
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias, gated=True)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    first_dense = c.int("first_k_dense_replace", default=1, minimum=0)
    n_moe = sum(_sparse_layers(c, layers, [i >= first_dense for i in range(layers)]))
    inner = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", inner, layers - n_moe)
    experts, width = c.int("n_routed_experts"), c.int("moe_intermediate_size")
    shared = width * c.int("n_shared_experts", default=1, minimum=0)
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
    p.dense_mlp("layers.mlp.shared_experts", shared, n_moe if shared else 0)
    _attention_caches(p, [FULL] * layers, kv_heads=kv_heads, head_dim=head_dim, window=None)
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, moe=moe)


def minimax_m3(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_minimax_m3_vl.py (MiniMaxM3VLForCausalLM, the text model): q/k/v/o with per-head q/k RMSNorms;
    ``minimax_m3_sparse`` layers add a lightning indexer (q_proj of index_n_heads x index_head_dim, k_proj of
    index_head_dim, q/k norms) whose keys the cache keeps per token (MiniMaxM3VLSparseCacheLayer.idx_keys);
    MoE layers (mlp_layer_types, default all sparse) have a router with an e_score_correction_bias buffer,
    fused experts of intermediate_size and a shared expert (gate_up_proj, down_proj) of
    shared_intermediate_size; dense layers a gate_up_proj/down_proj MLP of dense_intermediate_size."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    kinds = layer_types(c, layers, default=[FULL] * layers)
    sparse_attention = "minimax_m3_sparse"
    n_indexed = kinds.count(sparse_attention)
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, qk_norm="head")
    index_dim = c.int("index_head_dim", default=128) if n_indexed else 0
    if n_indexed:
        lay.linear("layers.self_attn.indexer.q_proj", c.int("index_n_heads", default=4) * index_dim, hidden,
                   n_indexed)
        lay.linear("layers.self_attn.indexer.k_proj", index_dim, hidden, n_indexed)
        lay.norm("layers.self_attn.indexer.q_norm", index_dim, n_indexed)
        lay.norm("layers.self_attn.indexer.k_norm", index_dim, n_indexed)
    lay.norm("layers.norms", hidden, 2 * layers)
    moe_freq = c.list("moe_layer_freq")
    default = [bool(f) for f in moe_freq[:layers]] if moe_freq else [True] * layers
    n_moe = sum(_sparse_layers(c, layers, default))
    experts, width = c.int("num_local_experts"), c.int("intermediate_size")
    dense_width = c.int("dense_intermediate_size", default=12288)
    shared = c.int("shared_intermediate_size", default=3072, minimum=0)
    lay.linear("layers.mlp.gate_up_proj", 2 * dense_width, hidden, layers - n_moe)
    lay.linear("layers.mlp.down_proj", hidden, dense_width, layers - n_moe)
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
    if shared:
        lay.linear("layers.mlp.shared_experts.gate_up_proj", 2 * shared, hidden, n_moe)
        lay.linear("layers.mlp.shared_experts.down_proj", hidden, shared, n_moe)
    _attention_caches(p, kinds, kv_heads=kv_heads, head_dim=head_dim, window=None, indexer_dim=index_dim,
                      indexed=sparse_attention)
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=dense_width if n_moe < layers else width, tied=tied, moe=moe)


def afmoe(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_afmoe.py: q/k/v/o, per-head q/k RMSNorms and a sigmoid output gate (gate_proj of heads x
    head_dim); four norms per layer (input, post_attention, pre_mlp, post_mlp); the first num_dense_layers
    layers dense, then an MoE with router.gate, an expert_bias parameter, fused experts and shared experts of
    moe_intermediate_size x num_shared_experts. Sliding layers every global_attn_every_n_layers-th excepted
    (configuration_afmoe.py)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    every = c.int("global_attn_every_n_layers", default=4)
    kinds = layer_types(c, layers, default=[SLIDING if (i + 1) % every else FULL for i in range(layers)])
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False), qk_norm="head")
    lay.linear("layers.self_attn.gate_proj", heads * head_dim, hidden, layers)
    lay.norm("layers.norms", hidden, 4 * layers)
    n_moe = max(0, layers - c.int("num_dense_layers", default=1, minimum=0))
    inner = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", inner, layers - n_moe)
    experts, width = c.int("num_experts"), c.int("moe_intermediate_size")
    shared = width * c.int("num_shared_experts", default=0, minimum=0)
    lay.add("layers.mlp.router.gate.weight", (experts, hidden), R.ROUTER, n_moe)
    lay.add("layers.mlp.expert_bias", (experts,), R.ROUTER, n_moe)
    lay.add("layers.mlp.experts.gate_up_proj", (experts, 2 * width, hidden), R.EXPERT_LINEAR, n_moe)
    lay.add("layers.mlp.experts.down_proj", (experts, hidden, width), R.EXPERT_LINEAR, n_moe)
    p.dense_mlp("layers.mlp.shared_experts", shared, n_moe if shared else 0)
    _attention_caches(p, kinds, kv_heads=kv_heads, head_dim=head_dim, window=c.int("sliding_window", default=None))
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, moe=moe)


def laguna(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_laguna.py: per-layer query heads (num_attention_heads_per_layer), shared K/V heads, per-head
    q/k RMSNorms, a softplus output gate g_proj (one value per head with gating true / "per-head", else per
    head x head_dim); MoE where mlp_layer_types says sparse (default: all but the first layer,
    configuration_laguna.py) with a router weight and e_score_correction_bias parameter, fused experts and a
    shared expert of shared_expert_intermediate_size."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    bias = c.bool("attention_bias", default=False)
    kinds = layer_types(c, layers, default=[FULL] * layers)
    per_layer = c.list("num_attention_heads_per_layer") or [heads] * layers
    if len(per_layer) < layers or not all(isinstance(n, int) and n > 0 and n % kv_heads == 0
                                          for n in per_layer[:layers]):
        raise ConfigError(f"{c.label}: num_attention_heads_per_layer must give, for each of the {layers} layers, "
                          f"a multiple of the {kv_heads} key/value heads", hint=f"got {per_layer!r}")
    gating = c.raw.get("gating", True)
    per_head_gate = gating is True or gating == "per-head"
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    for n_heads in sorted(set(per_layer[:layers])):
        n = per_layer[:layers].count(n_heads)
        p.gqa("layers.self_attn", n, heads=n_heads, kv_heads=kv_heads, head_dim=head_dim, bias=bias,
              qk_norm="head")
        lay.linear("layers.self_attn.g_proj", n_heads if per_head_gate else n_heads * head_dim, hidden, n)
    lay.norm("layers.norms", hidden, 2 * layers)
    n_moe = sum(_sparse_layers(c, layers, [i > 0 for i in range(layers)]))
    inner = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", inner, layers - n_moe)
    experts, width = c.int("num_experts"), c.int("moe_intermediate_size")
    shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
    p.dense_mlp("layers.mlp.shared_experts", shared, n_moe if shared else 0)
    _attention_caches(p, kinds, kv_heads=kv_heads, head_dim=head_dim, window=c.int("sliding_window", default=None))
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=max(per_layer[:layers]), kv_heads=kv_heads,
                  head_dim=head_dim, intermediate=inner, tied=tied, moe=moe)


def beam(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_beam.py: q/k/v/o with per-head q/k RMSNorms, an output gate (gate_proj of heads x head_dim and
    a gate_bias per head), four norms per layer (Gemma-style), dense MLPs then MoE layers (mlp_layer_types;
    default the first three dense) with a router weight, its e_score_correction_bias buffer and fused experts,
    no shared expert. Default layer_types: every sixth layer and the last one full, the others sliding
    (configuration_beam.py)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    default_kinds = [SLIDING if (i + 1) % 6 and i < layers - 1 else FULL for i in range(layers)]
    kinds = layer_types(c, layers, default=default_kinds)
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False), qk_norm="head")
    lay.linear("layers.self_attn.gate_proj", heads * head_dim, hidden, layers)
    lay.add("layers.self_attn.gate_bias", (heads,), R.BIAS, layers)
    lay.norm("layers.norms", hidden, 4 * layers)
    n_moe = sum(_sparse_layers(c, layers, [i >= min(3, layers) for i in range(layers)]))
    inner = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", inner, layers - n_moe)
    experts, width = c.int("num_experts"), c.int("moe_intermediate_size")
    p.experts("layers.mlp", n_moe, experts=experts, width=width, score_bias=True)
    _attention_caches(p, kinds, kv_heads=kv_heads, head_dim=head_dim, window=c.int("sliding_window", default=None))
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, moe=moe)


def flint(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_flint.py: q/k/v/o with per-head q/k RMSNorms and a learned sink per head; an MoE on the layers
    not in mlp_only_layers (default [0, 1]) where (i + 1) % decoder_sparse_step == 0: router weight, fused
    experts and an ungated shared_expert of shared_expert_intermediate_size. Default layer_types: full on the
    first two layers, every fourth (i % 4 == 1) and the last, sliding elsewhere (configuration_flint.py)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    default_kinds = [FULL if i < 2 or i % 4 == 1 or i == layers - 1 else SLIDING for i in range(layers)]
    kinds = layer_types(c, layers, default=default_kinds)
    dense_only = set(c.list("mlp_only_layers") or [0, 1])
    step = c.int("decoder_sparse_step", default=1)
    experts = c.int("num_experts", default=0, minimum=0)
    n_moe = sum(1 for i in range(layers) if i not in dense_only and experts and (i + 1) % step == 0)
    p = Parts(c, hidden)
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False), qk_norm="head", sinks=True)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    inner = c.int("intermediate_size")
    p.dense_mlp("layers.mlp", inner, layers - n_moe)
    width = c.int("moe_intermediate_size") if n_moe else 0
    shared = c.int("shared_expert_intermediate_size", default=0, minimum=0)
    p.experts("layers.mlp", n_moe, experts=experts, width=width)
    p.dense_mlp("layers.mlp.shared_expert", shared, n_moe if shared else 0)
    _attention_caches(p, kinds, kv_heads=kv_heads, head_dim=head_dim, window=c.int("sliding_window", default=None))
    moe = _moe(c, experts=experts, per_token=c.int("num_experts_per_tok"), width=width, n_moe=n_moe, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, moe=moe)


def aria_text(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_aria.py AriaTextForCausalLM: Llama attention; every layer an MoE of moe_num_experts experts of
    intermediate_size (a router weight, fused experts stored [E, h, 2I] and [E, I, h]) plus shared experts of
    intermediate_size x moe_num_shared_experts (mlp_bias)."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
          bias=c.bool("attention_bias", default=False))
    lay.norm("layers.norms", hidden, 2 * layers)
    experts, width = c.int("moe_num_experts"), c.int("intermediate_size")
    shared = width * c.int("moe_num_shared_experts", default=2, minimum=0)
    lay.add("layers.mlp.router.weight", (experts, hidden), R.ROUTER, layers)
    lay.add("layers.mlp.experts.gate_up_proj", (experts, hidden, 2 * width), R.EXPERT_LINEAR, layers)
    lay.add("layers.mlp.experts.down_proj", (experts, width, hidden), R.EXPERT_LINEAR, layers)
    p.dense_mlp("layers.mlp.shared_experts", shared, layers if shared else 0, bias=c.bool("mlp_bias", default=False))
    _attention_caches(p, [FULL] * layers, kv_heads=kv_heads, head_dim=head_dim, window=None)
    moe = _moe(c, experts=experts, per_token=c.int("moe_topk"), width=width, n_moe=layers, layers=layers,
               shared_width=shared)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=width, tied=tied, moe=moe)


def jetmoe(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_jetmoe.py: mixture-of-attention (JetMoeMoA: num_local_experts query/output experts of
    kv_channels x num_key_value_heads, a router, a bias) with one shared kv_proj; each token's top_k experts
    give top_k x num_key_value_heads query heads over the cached K/V heads; a mixture of GLU experts
    (JetMoeMoE: input_linear of 2 x intermediate_size, output_linear, router, bias); RMSNorms; tied head
    (configuration_jetmoe.py)."""
    hidden, layers, vocab = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("vocab_size")
    kv_heads, head_dim = c.int("num_key_value_heads"), c.int("kv_channels", "head_dim")
    experts, top_k, inner = c.int("num_local_experts"), c.int("num_experts_per_tok"), c.int("intermediate_size")
    heads = kv_heads * top_k
    tied = c.bool("tie_word_embeddings", default=True)
    kv_width = kv_heads * head_dim
    p = Parts(c, hidden)
    lay = p.lay
    _head(p, vocab, tied)
    lay.linear("layers.self_attention.kv_proj", 2 * kv_width, hidden, layers)
    lay.add("layers.self_attention.experts.input_linear.weight", (experts, kv_width, hidden), R.EXPERT_LINEAR,
            layers)
    lay.add("layers.self_attention.experts.output_linear.weight", (experts, hidden, kv_width), R.EXPERT_LINEAR,
            layers)
    lay.add("layers.self_attention.experts.router.layer.weight", (experts, hidden), R.ROUTER, layers)
    lay.add("layers.self_attention.experts.bias", (hidden,), R.BIAS, layers)
    lay.add("layers.mlp.input_linear.weight", (experts, 2 * inner, hidden), R.EXPERT_LINEAR, layers)
    lay.add("layers.mlp.output_linear.weight", (experts, hidden, inner), R.EXPERT_LINEAR, layers)
    lay.add("layers.mlp.router.layer.weight", (experts, hidden), R.ROUTER, layers)
    lay.add("layers.mlp.bias", (hidden,), R.BIAS, layers)
    lay.norm("layers.norms", hidden, 2 * layers)
    _attention_caches(p, [FULL] * layers, kv_heads=kv_heads, head_dim=head_dim, window=None)
    moe = _moe(c, experts=experts, per_token=top_k, width=inner, n_moe=layers, layers=layers)
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, moe=moe, act=c.str("activation_function", default="silu"))


def moshi(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_moshi.py MoshiForCausalLM (Moshi's text decoder): embed_tokens of vocab_size + 1 rows,
    q/k/v/o without bias, a gated MLP whose fc1 is ffn_dim wide and fc2 takes ffn_dim // 2 (MoshiGatingMLP),
    RMSNorms, an untied lm_head. DynamicCache(config=...) keeps sliding_window tokens on every layer
    (cache_utils.py get_layer_types_and_kwargs: a sliding_window without layer_types). The audio encoder and
    depth decoder of a full Moshi checkpoint (MoshiForConditionalGeneration) are not counted."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    ffn = c.int("ffn_dim")
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab + 1, hidden), R.EMBEDDING)
    lay.norm("norm", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    lay.linear("layers.mlp.fc1", ffn, hidden, layers)
    lay.linear("layers.mlp.fc2", hidden, ffn // 2, layers)
    lay.norm("layers.norms", hidden, 2 * layers)
    window = c.int("sliding_window", default=None)
    _attention_caches(p, [SLIDING if window else FULL] * layers, kv_heads=kv_heads, head_dim=head_dim,
                      window=window)
    if c.has("audio_encoder_config", "depth_decoder_config"):
        p.notes.append("Moshi: the text decoder is estimated (MoshiForCausalLM); the audio encoder and the depth "
                       "decoder are not counted")
    return finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=ffn // 2, tied=tied)


def gemma4_unified_assistant(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gemma4_unified_assistant.py Gemma4UnifiedAssistantForCausalLM, the drafter of Gemma 4 Unified:
    the text model of text_config (a Gemma 4 decoder whose layers all reuse the backbone's K/V, read by
    hybrid.gemma4_text), an lm_head tied to its embeddings, pre_projection (2 x backbone_hidden_size ->
    hidden) and post_projection (hidden -> backbone_hidden_size); with use_ordered_embeddings a centroids
    Linear (hidden -> num_centroids) too. Defaults from configuration_gemma4_unified_assistant.py."""
    text = c.raw.get("text_config")
    if not isinstance(text, dict):
        raise ConfigError(f"{c.label}: missing 'text_config'", hint="the drafter's text model is described there")
    inner = {k: c.raw[k] for k in ("torch_dtype", "dtype", "quantization_config", "tie_word_embeddings")
             if k in c.raw and k not in text}
    inner.update(text)
    inner.setdefault("model_type", "gemma4_unified_text")
    inner.setdefault("tie_word_embeddings", True)
    spec = gemma4_text(ConfigReader(inner, label=f"{c.label} (text_config)"), inner["model_type"])
    hidden, backbone = spec.hidden_size, c.int("backbone_hidden_size", default=3840)
    extra = [TensorGroup(name="pre_projection.weight", shape=(hidden, 2 * backbone), role=R.LINEAR),
             TensorGroup(name="post_projection.weight", shape=(backbone, hidden), role=R.LINEAR)]
    if c.bool("use_ordered_embeddings", default=False):
        extra.append(TensorGroup(name="masked_embedding.centroids.weight",
                                 shape=(c.int("num_centroids", default=2048), hidden), role=R.LINEAR))
    note = ("Gemma 4 drafter: its layers read the backbone model's K/V cache and keep none of their own; "
            "the backbone is estimated separately")
    return spec.model_copy(update={"tensors": spec.tensors + tuple(extra), "notes": spec.notes + (note,)})


def phi4_multimodal(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_phi4_multimodal.py Phi4MultimodalForCausalLM: a Phi-3 decoder (fused qkv_proj and
    gate_up_proj, the same counts as separate projections; RMSNorms; untied lm_head) plus the image and audio
    towers of its embed_tokens_extend (vision.phi4_multimodal_parameters), counted as one group."""
    hidden, layers, vocab, heads, kv_heads, head_dim = decoder_dims(c)
    tied = c.bool("tie_word_embeddings", default=False)
    inner = c.int("intermediate_size")
    p = Parts(c, hidden)
    _head(p, vocab, tied)
    p.gqa("layers.self_attn", layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    p.dense_mlp("layers.mlp", inner, layers)
    p.lay.norm("layers.norms", hidden, 2 * layers)
    towers = phi4_multimodal_parameters(c.raw, hidden)
    p.lay.add("vision_tower", (towers,), R.OTHER)
    p.notes.append(f"multimodal checkpoint: the image and audio towers and projectors ({towers:,} parameters) are "
                   "counted in the weights; their activations are not modelled, and image or audio tokens count "
                   "as sequence")
    _attention_caches(p, [FULL] * layers, kv_heads=kv_heads, head_dim=head_dim, window=None)
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=inner, tied=tied)
    return spec.model_copy(update={"vision_parameters": towers})


FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    "bitnet": bitnet,
    "modernbert-decoder": modernbert_decoder,
    "minicpm5_moe": minicpm5_moe,
    "minimax_m3_vl_text": minimax_m3,
    "afmoe": afmoe,
    "laguna": laguna,
    "beam": beam,
    "flint": flint,
    "aria_text": aria_text,
    "jetmoe": jetmoe,
    "moshi": moshi,
    "gemma4_unified_assistant": gemma4_unified_assistant,
    "phi4_multimodal": phi4_multimodal,
}
