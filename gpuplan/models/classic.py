"""Decoder families of the GPT-2 era and their relatives: fused or separate q/k/v with biases, LayerNorms with
bias, learned or fixed positions, plain two-matrix MLPs.

Each parser mirrors the module tree of the family's modeling file in transformers 5.25 (named at each
parser); tests/test_architectures.py replays the parameters transformers 5.25 builds from each family's
default config and the cache it holds after a forward. Every layer of these families is full attention with
one K/V head per query head (their caches are DynamicLayers of [batch, heads, tokens, head_dim]).
"""

from __future__ import annotations

from collections.abc import Callable

from gpuplan.errors import ConfigError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.hybrid import FULL, Parts, finish
from gpuplan.models.layout import check_heads
from gpuplan.models.spec import LayerCache, ModelSpec, TensorRole
from gpuplan.models.vision import GIT_VISION_DEFAULTS, clip_vision_parameters

R = TensorRole


def _head_dim(c: ConfigReader, hidden: int, heads: int) -> int:
    if hidden % heads:
        raise ConfigError(f"{c.label}: hidden size {hidden} is not divisible by {heads} attention heads")
    return hidden // heads


def _full_attention_caches(p: Parts, layers: int, kv_heads: int, head_dim: int) -> None:
    for _ in range(layers):
        p.attention_cache(FULL, kv_heads=kv_heads, key_dim=head_dim, value_dim=head_dim)


def _finish(p: Parts, model_type: str, *, layers: int, vocab: int, heads: int, intermediate: int, tied: bool,
            act: str, head_dim: int | None = None, kv_heads: int | None = None) -> ModelSpec:
    head_dim = head_dim or _head_dim(p.c, p.hidden, heads)
    kv_heads = kv_heads or heads
    _full_attention_caches(p, layers, kv_heads, head_dim)
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                  intermediate=intermediate, tied=tied, act=act, gated_ffn=False)
    return spec.model_copy(update={"norm_kind": "layer"})


def bloom(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_bloom.py: word embeddings followed by a LayerNorm, fused query_key_value (3h) and dense with
    bias, a 4h MLP with bias, LayerNorms with bias, ALiBi (no position parameters), tied head
    (configuration_bloom.py: tie_word_embeddings True; ``n_embed`` is an old name of hidden_size)."""
    hidden, layers, heads = c.int("hidden_size", "n_embed"), c.int("n_layer", "num_hidden_layers"), c.int("n_head")
    vocab = c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("word_embeddings.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("word_embeddings_layernorm", hidden, 1, bias=True)
    lay.norm("h.input_layernorm", hidden, layers, bias=True)
    lay.linear("h.self_attention.query_key_value", 3 * hidden, hidden, layers, bias=True)
    lay.linear("h.self_attention.dense", hidden, hidden, layers, bias=True)
    lay.norm("h.post_attention_layernorm", hidden, layers, bias=True)
    lay.linear("h.mlp.dense_h_to_4h", 4 * hidden, hidden, layers, bias=True)
    lay.linear("h.mlp.dense_4h_to_h", hidden, 4 * hidden, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=4 * hidden, tied=tied,
                   act="bloom_gelu")


def gptj(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gptj.py (GPT-J) and modeling_codegen.py (CodeGen, whose q/k/v are one fused qkv_proj): one
    LayerNorm per block (attention and MLP in parallel), projections without bias, an MLP of n_inner (default
    4h) with bias, rotary positions, an untied lm_head with bias (configuration_gptj.py,
    configuration_codegen.py: tie_word_embeddings False)."""
    hidden, layers, heads = c.int("n_embd", "hidden_size"), c.int("n_layer"), c.int("n_head")
    vocab = c.int("vocab_size")
    inner = c.int("n_inner", default=4 * hidden)
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("h.ln_1", hidden, layers, bias=True)
    if model_type == "codegen":
        lay.linear("h.attn.qkv_proj", 3 * hidden, hidden, layers)
    else:
        for proj in ("q_proj", "k_proj", "v_proj"):
            lay.linear(f"h.attn.{proj}", hidden, hidden, layers)
    lay.linear("h.attn.out_proj", hidden, hidden, layers)
    lay.linear("h.mlp.fc_in", inner, hidden, layers, bias=True)
    lay.linear("h.mlp.fc_out", hidden, inner, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    # The head's bias is there whether or not its weight is tied (nn.Linear(n_embd, vocab_size)).
    lay.add("lm_head.bias", (vocab,), R.BIAS)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("activation_function", default="gelu_new"))


def gpt_neo(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gpt_neo.py: GPT-2 layout with learned positions, q/k/v without bias, out_proj with bias, an
    MLP of intermediate_size (default 4h). Local layers only mask beyond window_size: transformers caches
    them like global ones (DynamicCache(config=...) finds no sliding_window in GPTNeoConfig)."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_layers"), c.int("num_heads")
    vocab, positions = c.int("vocab_size"), c.int("max_position_embeddings")
    inner = c.int("intermediate_size", default=4 * hidden)
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.add("wpe.weight", (positions, hidden), R.POSITION_EMBEDDING)
    lay.norm("h.ln_1", hidden, layers, bias=True)
    for proj in ("q_proj", "k_proj", "v_proj"):
        lay.linear(f"h.attn.attention.{proj}", hidden, hidden, layers)
    lay.linear("h.attn.attention.out_proj", hidden, hidden, layers, bias=True)
    lay.norm("h.ln_2", hidden, layers, bias=True)
    lay.linear("h.mlp.c_fc", inner, hidden, layers, bias=True)
    lay.linear("h.mlp.c_proj", hidden, inner, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("activation_function", default="gelu_new"))


def mpt(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_mpt.py: fused Wqkv and out_proj without bias, LayerNorms whose bias is removed
    (``norm_1.bias = None``), an MLP of 4 x d_model without bias (transformers ignores expansion_ratio and
    no_bias; every published MPT has 4 and true), ALiBi (no position parameters), tied head."""
    hidden, layers, heads = c.int("d_model", "hidden_size"), c.int("n_layers"), c.int("n_heads")
    vocab = c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=True)
    inner = 4 * hidden
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("blocks.norm_1", hidden, layers)
    lay.linear("blocks.attn.Wqkv", 3 * hidden, hidden, layers)
    lay.linear("blocks.attn.out_proj", hidden, hidden, layers)
    lay.norm("blocks.norm_2", hidden, layers)
    lay.linear("blocks.ffn.up_proj", inner, hidden, layers)
    lay.linear("blocks.ffn.down_proj", hidden, inner, layers)
    lay.norm("norm_f", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    spec = _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act="gelu")
    # configuration_mpt.py: max_seq_len (2048) is the context the model was trained for
    return spec.model_copy(update={"max_position_embeddings": c.int("max_seq_len", default=2048)})


def phi(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_phi.py: q/k/v (grouped by num_key_value_heads) and dense with bias, optional q/k LayerNorms
    (qk_layernorm) of hidden // heads, one LayerNorm per block (parallel attention and MLP), fc1/fc2 with
    bias, final_layernorm, an untied lm_head with bias."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", default=heads)
    check_heads(c, heads, kv_heads)
    head_dim = c.int("head_dim", default=_head_dim(c, hidden, heads))
    vocab, inner = c.int("vocab_size"), c.int("intermediate_size")
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("layers.input_layernorm", hidden, layers, bias=True)
    lay.linear("layers.self_attn.q_proj", heads * head_dim, hidden, layers, bias=True)
    lay.linear("layers.self_attn.k_proj", kv_heads * head_dim, hidden, layers, bias=True)
    lay.linear("layers.self_attn.v_proj", kv_heads * head_dim, hidden, layers, bias=True)
    lay.linear("layers.self_attn.dense", hidden, heads * head_dim, layers, bias=True)
    if c.bool("qk_layernorm", default=False):
        lay.norm("layers.self_attn.q_layernorm", hidden // heads, layers, bias=True)
        lay.norm("layers.self_attn.k_layernorm", hidden // heads, layers, bias=True)
    lay.linear("layers.mlp.fc1", inner, hidden, layers, bias=True)
    lay.linear("layers.mlp.fc2", hidden, inner, layers, bias=True)
    lay.norm("final_layernorm", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    lay.add("lm_head.bias", (vocab,), R.BIAS)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="gelu_new"), head_dim=head_dim, kv_heads=kv_heads)


def persimmon(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_persimmon.py (and Fuyu's language model): fused query_key_value (3h) and dense with bias,
    q/k LayerNorms of hidden // heads when qk_layernorm, two LayerNorms per block, dense_h_to_4h /
    dense_4h_to_h with bias, final_layernorm, untied lm_head without bias."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    vocab, inner = c.int("vocab_size"), c.int("intermediate_size")
    head_dim = _head_dim(c, hidden, heads)
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("layers.input_layernorm", hidden, layers, bias=True)
    lay.linear("layers.self_attn.query_key_value", 3 * hidden, hidden, layers, bias=True)
    lay.linear("layers.self_attn.dense", hidden, hidden, layers, bias=True)
    if c.bool("qk_layernorm", default=True):
        lay.norm("layers.self_attn.q_layernorm", head_dim, layers, bias=True)
        lay.norm("layers.self_attn.k_layernorm", head_dim, layers, bias=True)
    lay.norm("layers.post_attention_layernorm", hidden, layers, bias=True)
    lay.linear("layers.mlp.dense_h_to_4h", inner, hidden, layers, bias=True)
    lay.linear("layers.mlp.dense_4h_to_h", hidden, inner, layers, bias=True)
    lay.norm("final_layernorm", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="relu2"))


def openai_gpt(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_openai.py (GPT-1): token and learned position embeddings, post-norm blocks (c_attn, c_proj,
    ln_1, an MLP of 4 x n_embd, ln_2; Conv1D with bias), no final norm, tied head."""
    hidden, layers, heads = c.int("n_embd"), c.int("n_layer"), c.int("n_head")
    vocab, positions = c.int("vocab_size"), c.int("n_positions")
    tied = c.bool("tie_word_embeddings", default=True)
    inner = 4 * hidden  # MLP(4 * nx, config) in Block.__init__
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("tokens_embed.weight", (vocab, hidden), R.EMBEDDING)
    lay.add("positions_embed.weight", (positions, hidden), R.POSITION_EMBEDDING)
    lay.linear("h.attn.c_attn", 3 * hidden, hidden, layers, bias=True)
    lay.linear("h.attn.c_proj", hidden, hidden, layers, bias=True)
    lay.norm("h.ln_1", hidden, layers, bias=True)
    lay.linear("h.mlp.c_fc", inner, hidden, layers, bias=True)
    lay.linear("h.mlp.c_proj", hidden, inner, layers, bias=True)
    lay.norm("h.ln_2", hidden, layers, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("afn", default="gelu"))


def ctrl(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_ctrl.py: sinusoidal positions (a buffer), Wq/Wk/Wv/dense with bias, an ffn of dff
    (nn.Sequential: Linear, ReLU, Linear) with bias, two LayerNorms per block, a final layernorm, a head tied
    to ``w`` with its own bias."""
    hidden, layers, heads = c.int("n_embd"), c.int("n_layer"), c.int("n_head")
    vocab, inner = c.int("vocab_size"), c.int("dff")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("w.weight", (vocab, hidden), R.EMBEDDING)
    for proj in ("Wq", "Wk", "Wv", "dense"):
        lay.linear(f"h.multi_head_attention.{proj}", hidden, hidden, layers, bias=True)
    lay.linear("h.ffn.0", inner, hidden, layers, bias=True)
    lay.linear("h.ffn.2", hidden, inner, layers, bias=True)
    lay.norm("h.layernorm1", hidden, layers, bias=True)
    lay.norm("h.layernorm2", hidden, layers, bias=True)
    lay.norm("layernorm", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    lay.add("lm_head.bias", (vocab,), R.BIAS)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act="relu")


def gpt_neox_japanese(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gpt_neox_japanese.py: fused query_key_value and dense without bias, a separate dense_bias on
    the last layer only (``use_bias=layer_number == num_hidden_layers - 1``), an MLP of hidden x
    intermediate_multiple_size without bias, LayerNorms with bias, embed_out tied by default."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    vocab = c.int("vocab_size")
    inner = int(hidden * c.float("intermediate_multiple_size", default=4))
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_in.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("layers.input_layernorm", hidden, layers, bias=True)
    lay.norm("layers.post_attention_layernorm", hidden, layers, bias=True)
    lay.linear("layers.attention.query_key_value", 3 * hidden, hidden, layers)
    lay.linear("layers.attention.dense", hidden, hidden, layers)
    lay.add("layers.attention.dense_bias", (hidden,), R.BIAS)
    lay.linear("layers.mlp.dense_h_to_4h", inner, hidden, layers)
    lay.linear("layers.mlp.dense_4h_to_h", hidden, inner, layers)
    lay.norm("final_layer_norm", hidden, 1, bias=True)
    if not tied:
        lay.add("embed_out.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="gelu"))


def _fairseq_layers(p: Parts, prefix: str, layers: int, inner: int, *, k_bias: bool = True,
                    cross_attention: bool = False) -> None:
    """A fairseq-style pre-norm decoder layer: self_attn q/k/v/out_proj, self_attn_layer_norm, fc1/fc2,
    final_layer_norm, all with bias (modeling_xglm.py, modeling_biogpt.py, modeling_trocr.py); with
    ``cross_attention`` an encoder_attn of the same shape and its LayerNorm; ``k_bias`` False for Whisper's
    k_proj (modeling_whisper.py WhisperAttention: k_proj bias=False)."""
    lay, h = p.lay, p.hidden
    for attn in ("self_attn", "encoder_attn") if cross_attention else ("self_attn",):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lay.linear(f"{prefix}.{attn}.{proj}", h, h, layers, bias=k_bias or proj != "k_proj")
        lay.norm(f"{prefix}.{attn}_layer_norm", h, layers, bias=True)
    lay.linear(f"{prefix}.fc1", inner, h, layers, bias=True)
    lay.linear(f"{prefix}.fc2", h, inner, layers, bias=True)
    lay.norm(f"{prefix}.final_layer_norm", h, layers, bias=True)


def xglm(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_xglm.py: scaled token embeddings, sinusoidal positions (a buffer), fairseq-style layers of
    ffn_dim, a final layer_norm, tied head."""
    hidden, layers, heads = c.int("d_model"), c.int("num_layers"), c.int("attention_heads")
    vocab, inner = c.int("vocab_size"), c.int("ffn_dim")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    _fairseq_layers(p, "layers", layers, inner, cross_attention=c.bool("add_cross_attention", default=False))
    p.lay.norm("layer_norm", hidden, 1, bias=True)
    if not tied:
        p.lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("activation_function", default="gelu"))


def biogpt(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_biogpt.py: scaled token embeddings, learned positions with an offset of 2
    (BioGptLearnedPositionalEmbedding: num_embeddings + 2), fairseq-style layers of intermediate_size, a
    final layer_norm, output_projection tied to the embeddings."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    vocab, inner, positions = c.int("vocab_size"), c.int("intermediate_size"), c.int("max_position_embeddings")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.add("embed_positions.weight", (positions + 2, hidden), R.POSITION_EMBEDDING)
    _fairseq_layers(p, "layers", layers, inner)
    p.lay.norm("layer_norm", hidden, 1, bias=True)
    if not tied:
        p.lay.add("output_projection.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="gelu"))


def trocr(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_trocr.py (TrOCRForCausalLM, the decoder of TrOCR): learned positions with an offset of 2 when
    use_learned_position_embeddings (else sinusoidal, a buffer), layernorm_embedding, fairseq-style layers
    with a cross-attention (is_decoder: k/v from cross_attention_hidden_size, default d_model), no final
    norm, output_projection tied. Without an encoder the cross-attention is skipped and caches nothing."""
    hidden, layers = c.int("d_model", "hidden_size"), c.int("decoder_layers")
    heads, inner = c.int("decoder_attention_heads"), c.int("decoder_ffn_dim")
    vocab = c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=True)
    cross_dim = c.int("cross_attention_hidden_size", default=hidden)
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    if c.bool("use_learned_position_embeddings", default=True):
        lay.add("embed_positions.weight", (c.int("max_position_embeddings") + 2, hidden), R.POSITION_EMBEDDING)
    if c.bool("layernorm_embedding", default=True):
        lay.norm("layernorm_embedding", hidden, 1, bias=True)
    is_decoder = c.bool("is_decoder", default=True)
    _fairseq_layers(p, "layers", layers, inner)
    if is_decoder:
        lay.linear("layers.encoder_attn.q_proj", hidden, hidden, layers, bias=True)
        lay.linear("layers.encoder_attn.k_proj", hidden, cross_dim, layers, bias=True)
        lay.linear("layers.encoder_attn.v_proj", hidden, cross_dim, layers, bias=True)
        lay.linear("layers.encoder_attn.out_proj", hidden, hidden, layers, bias=True)
        lay.norm("layers.encoder_attn_layer_norm", hidden, layers, bias=True)
    if not tied:
        lay.add("output_projection.weight", (vocab, hidden), R.LM_HEAD)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("activation_function", default="gelu"))


def whisper(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_whisper.py WhisperForCausalLM (the text decoder, as for speculative decoding): token and
    learned positions (max_target_positions), pre-norm layers with a cross-attention (k_proj without bias),
    a final layer_norm, proj_out tied to the token embeddings. Without encoder states the cross-attention is
    skipped and caches nothing. The audio encoder of a full Whisper checkpoint is not counted (noted)."""
    hidden, layers = c.int("d_model"), c.int("decoder_layers")
    heads, inner = c.int("decoder_attention_heads"), c.int("decoder_ffn_dim")
    vocab, positions = c.int("vocab_size"), c.int("max_target_positions")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    p.lay.add("embed_tokens.weight", (vocab, hidden), R.EMBEDDING)
    p.lay.add("embed_positions.weight", (positions, hidden), R.POSITION_EMBEDDING)
    _fairseq_layers(p, "layers", layers, inner, k_bias=False, cross_attention=True)
    p.lay.norm("layer_norm", hidden, 1, bias=True)
    if not tied:
        p.lay.add("proj_out.weight", (vocab, hidden), R.LM_HEAD)
    if c.bool("is_encoder_decoder", default=True):
        p.notes.append("Whisper: the text decoder is estimated (WhisperForCausalLM); the audio encoder's "
                       f"{c.int('encoder_layers', default=0)} layers are not counted")
    spec = _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("activation_function", default="gelu"))
    return spec.model_copy(update={"max_position_embeddings": positions})


def _bert_layers(p: Parts, prefix: str, layers: int, inner: int, *, cross_attention: bool = False) -> None:
    """BERT's post-norm encoder layer used as a decoder (modeling_bert_generation.py, modeling_git.py):
    attention.self.query/key/value, attention.output.dense + LayerNorm, intermediate.dense, output.dense +
    LayerNorm, all with bias; a crossattention block of the same shape with ``cross_attention``."""
    lay, h = p.lay, p.hidden
    for block in ("attention", "crossattention") if cross_attention else ("attention",):
        for proj in ("query", "key", "value"):
            lay.linear(f"{prefix}.{block}.self.{proj}", h, h, layers, bias=True)
        lay.linear(f"{prefix}.{block}.output.dense", h, h, layers, bias=True)
        lay.norm(f"{prefix}.{block}.output.LayerNorm", h, layers, bias=True)
    lay.linear(f"{prefix}.intermediate.dense", inner, h, layers, bias=True)
    lay.linear(f"{prefix}.output.dense", h, inner, layers, bias=True)
    lay.norm(f"{prefix}.output.LayerNorm", h, layers, bias=True)


def _bert_embeddings(p: Parts, vocab: int, positions: int) -> None:
    p.lay.add("embeddings.word_embeddings.weight", (vocab, p.hidden), R.EMBEDDING)
    p.lay.add("embeddings.position_embeddings.weight", (positions, p.hidden), R.POSITION_EMBEDDING)
    p.lay.norm("embeddings.LayerNorm", p.hidden, 1, bias=True)


def bert_generation(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_bert_generation.py BertGenerationDecoder: word and position embeddings with a LayerNorm (no
    token types), BERT's layers (a cross-attention only with add_cross_attention), no pooler, lm_head.decoder
    tied to the word embeddings plus lm_head.bias."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    vocab, inner, positions = c.int("vocab_size"), c.int("intermediate_size"), c.int("max_position_embeddings")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, hidden)
    _bert_embeddings(p, vocab, positions)
    _bert_layers(p, "encoder.layer", layers, inner, cross_attention=c.bool("add_cross_attention", default=False))
    if not tied:
        p.lay.add("lm_head.decoder.weight", (vocab, hidden), R.LM_HEAD)
    p.lay.add("lm_head.bias", (vocab,), R.BIAS)
    return _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="gelu"))


def git(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_git.py GitForCausalLM: BERT-style embeddings and layers over the text, a CLIP vision encoder
    (vision_config), a visual_projection (Linear to hidden_size + LayerNorm), one img_temporal_embedding per
    image when num_image_with_embedding is set, and an untied output Linear with bias. The vision encoder and
    projection are counted as the vision tower."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    vocab, inner, positions = c.int("vocab_size"), c.int("intermediate_size"), c.int("max_position_embeddings")
    tied = c.bool("tie_word_embeddings", default=False)
    p = Parts(c, hidden)
    _bert_embeddings(p, vocab, positions)
    _bert_layers(p, "encoder.layer", layers, inner)
    if not tied:
        p.lay.add("output.weight", (vocab, hidden), R.LM_HEAD)
    p.lay.add("output.bias", (vocab,), R.BIAS)
    raw_vision = c.raw.get("vision_config")
    vision_cfg = ConfigReader(raw_vision if isinstance(raw_vision, dict) else {}, label=f"{c.label} vision_config")
    vision_hidden = vision_cfg.int("hidden_size", default=GIT_VISION_DEFAULTS["hidden_size"])
    images = c.int("num_image_with_embedding", default=0, minimum=0)
    tower = (clip_vision_parameters({**GIT_VISION_DEFAULTS, **vision_cfg.raw}, patch_bias=False)
             + vision_hidden * hidden + hidden + 2 * hidden + images * vision_hidden)
    p.lay.add("vision_tower", (tower,), R.OTHER)
    spec = _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=tied,
                   act=c.str("hidden_act", default="gelu"))
    note = (f"multimodal checkpoint: the vision tower and projector ({tower:,} parameters) are counted in the "
            "weights; their activations are not modelled, and image tokens count as sequence")
    return spec.model_copy(update={"vision_parameters": tower, "notes": spec.notes + (note,)})


def cpmant(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_cpmant.py: input_embedding of vocab_size + prompt_types x prompt_length rows, a
    segment_embedding, a relative position bias of segment_types² + position_bias_num_buckets rows per head,
    pre-norm layers (weight-only LayerNorms, project_q/k/v of num_attention_heads x dim_head, attention_out,
    a gated FFN w_0/w_1/w_out of dim_ff, no biases), output_layernorm, and an lm_head that the checkpoint
    stores on its own (CpmAntForCausalLM: _tied_weights_keys is empty)."""
    hidden, layers, heads = c.int("hidden_size"), c.int("num_hidden_layers"), c.int("num_attention_heads")
    head_dim, inner, vocab = c.int("dim_head"), c.int("dim_ff"), c.int("vocab_size")
    segments = c.int("segment_types")
    prompts = c.int("prompt_types") * c.int("prompt_length")
    p = Parts(c, hidden)
    lay = p.lay
    lay.add("input_embedding.weight", (vocab + prompts, hidden), R.EMBEDDING)
    lay.add("segment_embedding.weight", (segments, hidden), R.EMBEDDING)
    lay.add("position_bias.relative_attention_bias", (segments * segments + c.int("position_bias_num_buckets"),
                                                      heads), R.OTHER)
    lay.norm("encoder.layers.self_att.layernorm_before_attention", hidden, layers)
    for proj in ("project_q", "project_k", "project_v"):
        lay.linear(f"encoder.layers.self_att.self_attention.{proj}", heads * head_dim, hidden, layers)
    lay.linear("encoder.layers.self_att.self_attention.attention_out", hidden, heads * head_dim, layers)
    lay.norm("encoder.layers.ffn.layernorm_before_ffn", hidden, layers)
    lay.linear("encoder.layers.ffn.ffn.w_in.w_0", inner, hidden, layers)
    lay.linear("encoder.layers.ffn.ffn.w_in.w_1", inner, hidden, layers)
    lay.linear("encoder.layers.ffn.ffn.w_out", hidden, inner, layers)
    lay.norm("encoder.output_layernorm", hidden, 1)
    lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    spec = _finish(p, model_type, layers=layers, vocab=vocab, heads=heads, intermediate=inner, tied=False,
                   act="gelu", head_dim=head_dim)
    # CpmAntLayerNorm divides by the root mean square (no mean subtracted): an RMSNorm.
    return spec.model_copy(update={"ffn_gated": True, "norm_kind": "rms"})


def xlnet(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_xlnet.py XLNetLMHeadModel: word_embedding, mask_emb, per layer the relative attention's
    q/k/v/o/r projections stored [d_model, n_head, d_head], its r_r/r_s/r_w biases and seg_embed, two
    LayerNorms, a feed-forward layer_1/layer_2 of d_inner with bias; lm_loss tied to the embeddings with its own
    bias. Generation keeps no K/V: each layer's input hidden states are kept as ``mems`` (XLNetModel.cache_mem),
    the last mem_len of them (all with mem_len unset), one d_model vector per token and layer; this is read from
    the code (the architecture fixture records no cache for XLNet)."""
    d, layers, heads = c.int("d_model"), c.int("n_layer"), c.int("n_head")
    head_dim, inner, vocab = c.int("d_head"), c.int("d_inner"), c.int("vocab_size")
    tied = c.bool("tie_word_embeddings", default=True)
    p = Parts(c, d)
    lay = p.lay
    lay.add("word_embedding.weight", (vocab, d), R.EMBEDDING)
    lay.add("mask_emb", (1, 1, d), R.EMBEDDING)
    for proj in ("q", "k", "v", "o", "r"):
        lay.add(f"layer.rel_attn.{proj}", (d, heads, head_dim), R.LINEAR, layers)
    for bias in ("r_r_bias", "r_s_bias", "r_w_bias"):
        lay.add(f"layer.rel_attn.{bias}", (heads, head_dim), R.BIAS, layers)
    lay.add("layer.rel_attn.seg_embed", (2, heads, head_dim), R.OTHER, layers)
    lay.norm("layer.rel_attn.layer_norm", d, layers, bias=True)
    lay.norm("layer.ff.layer_norm", d, layers, bias=True)
    lay.linear("layer.ff.layer_1", inner, d, layers, bias=True)
    lay.linear("layer.ff.layer_2", d, inner, layers, bias=True)
    if not tied:
        lay.add("lm_loss.weight", (vocab, d), R.LM_HEAD)
    lay.add("lm_loss.bias", (vocab,), R.BIAS)
    mem_len = c.int("mem_len", default=None, minimum=0) or None
    for _ in range(layers):
        p.caches.append(LayerCache(kind="attention", mixer="mems", kv_heads=1, key_dim=d, value_dim=0,
                                   window=mem_len))
    p.notes.append("XLNet keeps each layer's input hidden states (mems) instead of K/V; the cache estimate follows "
                   "modeling_xlnet.py and has not been measured")
    spec = finish(p, model_type, layers=layers, vocab=vocab, heads=heads, kv_heads=heads, head_dim=head_dim,
                  intermediate=inner, tied=tied, act=c.str("ff_activation", default="gelu"), gated_ffn=False)
    return spec.model_copy(update={"norm_kind": "layer"})


FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    "bloom": bloom,
    "gptj": gptj,
    "codegen": gptj,
    "gpt_neo": gpt_neo,
    "mpt": mpt,
    "phi": phi,
    "persimmon": persimmon,
    "openai-gpt": openai_gpt,
    "ctrl": ctrl,
    "gpt_neox_japanese": gpt_neox_japanese,
    "xglm": xglm,
    "biogpt": biogpt,
    "trocr": trocr,
    "whisper": whisper,
    "bert-generation": bert_generation,
    "git": git,
    "cpmant": cpmant,
    "xlnet": xlnet,
}
