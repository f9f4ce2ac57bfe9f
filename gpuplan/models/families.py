"""Config families -> ModelSpec.

One parser per family of config.json, all producing the same ModelSpec with the model's exact tensor
layout. Each layout mirrors the module tree of the family's reference implementation (file named at each
parser); the parameter counts this gives are checked against published totals in tests/test_params.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuplan.errors import ConfigError, UnsupportedModelError
from gpuplan.models.classic import FAMILIES as CLASSIC_FAMILIES
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.hybrid import FAMILIES as HYBRID_FAMILIES
from gpuplan.models.hybrid import generic_decoder, has_state_layers, state_keys
from gpuplan.models.layout import Layout as _Layout
from gpuplan.models.layout import check_heads as _check_heads
from gpuplan.models.layout import max_positions as _max_positions
from gpuplan.models.layout import native_dtype as _native_dtype
from gpuplan.models.llama_kin import FAMILIES as LLAMA_KIN_FAMILIES
from gpuplan.models.quant import parse_quantization_config
from gpuplan.models.recurrent import FAMILIES as RECURRENT_FAMILIES
from gpuplan.models.sparse_families import FAMILIES as SPARSE_FAMILIES
from gpuplan.models.spec import MlaSpec, ModelSpec, MoeSpec, TensorGroup, TensorRole

R = TensorRole


# ------------------------------------------------------------------------------------------------
# Llama-style decoders: llama, mistral, mixtral, qwen2(_moe), qwen3(_moe), gemma 1/2/3, phi3, olmo(e),
# granite, deepseek v2/v3, gpt-oss, starcoder2 ... share one builder with switches for what differs.
# ------------------------------------------------------------------------------------------------


def _layer_windows(c: ConfigReader, num_layers: int, model_type: str) -> tuple[int | None, ...]:
    """Per-layer attention span, following each family's modeling file.

    ``layer_types`` (transformers >= 4.53 configs) is authoritative when present. Otherwise:
    - gemma2: even layers slide (modeling_gemma2.py: ``is_sliding = not bool(layer_idx % 2)``);
    - gemma3: every ``sliding_window_pattern``-th layer is global (configuration_gemma3.py);
    - qwen2 family: sliding only with ``use_sliding_window``, from ``max_window_layers`` on
      (configuration_qwen2.py);
    - mistral / mixtral / phi3 / starcoder2: ``sliding_window`` applies to every layer when set.
    """
    # 0 means no window (configuration_qwen2_moe.py's default with use_sliding_window off)
    window = c.int("sliding_window", default=None, minimum=0) or None
    layer_types = c.list("layer_types")
    if layer_types is not None:
        if len(layer_types) < num_layers:
            raise ConfigError(f"{c.label}: layer_types has {len(layer_types)} entries for {num_layers} layers")
        out: list[int | None] = []
        chunk = c.int("attention_chunk_size", default=None)
        for kind in layer_types[:num_layers]:
            if kind == "chunked_attention" and chunk is not None:
                out.append(chunk)  # transformers caches a chunked layer like a sliding one of this span
            elif kind in ("sliding_attention", "chunked_attention", "local"):
                if window is None:
                    raise ConfigError(f"{c.label}: layer_types names sliding layers but sliding_window is unset")
                out.append(window)
            else:
                out.append(None)
        return tuple(out)
    if window is None:
        return (None,) * num_layers
    if model_type == "gemma2":
        return tuple(window if i % 2 == 0 else None for i in range(num_layers))
    if model_type in ("gemma3_text", "gemma3"):
        pattern = c.int("sliding_window_pattern", default=6)
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(num_layers))
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        if not c.bool("use_sliding_window", default=False):
            return (None,) * num_layers
        first = c.int("max_window_layers", default=num_layers, minimum=0)
        return tuple(window if i >= first else None for i in range(num_layers))
    return (window,) * num_layers


def _llama_like(c: ConfigReader, model_type: str) -> ModelSpec:
    """A Llama-style decoder and its relatives (options of transformers' modeling_llama.py and its copies)."""
    return _LlamaLike(c, model_type).build()


class _LlamaLike:
    """Reads a Llama-style config once; each method lays out one part of the model's tensors."""

    def __init__(self, c: ConfigReader, model_type: str) -> None:
        self.c, self.model_type = c, model_type
        self.hidden = hidden = c.int("hidden_size")
        self.layers = c.int("num_hidden_layers")
        self.heads = heads = c.int("num_attention_heads")
        self.kv_heads = c.int("num_key_value_heads", default=heads)
        _check_heads(c, heads, self.kv_heads)
        self.vocab = c.int("vocab_size")
        explicit_head_dim = c.int("head_dim", default=None)
        if explicit_head_dim is None and hidden % heads:
            raise ConfigError(f"{c.label}: hidden_size {hidden} is not divisible by {heads} heads and no head_dim "
                              "is given")
        self.head_dim = explicit_head_dim or hidden // heads
        self.v_head_dim = self.head_dim
        self.intermediate = c.int("intermediate_size", default=None)
        # Config classes whose tie_word_embeddings defaults to True: Gemma*, Starcoder2 (configuration_*.py).
        self.tied = c.bool("tie_word_embeddings", default=model_type.startswith("gemma") or model_type == "starcoder2")
        self.notes: list[str] = []
        attn_bias_default = model_type in ("qwen2", "qwen2_moe", "gpt_oss", "starcoder2")
        self.qkv_bias = c.bool("attention_bias", "use_bias", "qkv_bias", default=attn_bias_default)
        # Qwen2 puts biases on q/k/v only (modeling_qwen2.py); llama's attention_bias covers o_proj too.
        self.o_bias = self.qkv_bias and model_type not in ("qwen2", "qwen2_moe")
        if model_type == "starcoder2":
            self.o_bias = c.bool("use_bias", default=True)
        self.mlp_bias = c.bool("mlp_bias", default=model_type == "starcoder2")
        self.layer_norm = model_type in ("starcoder2",)
        self.gated = model_type not in ("starcoder2",)
        self.mtp = c.int("num_nextn_predict_layers", default=0, minimum=0) if model_type == "deepseek_v3" else 0
        self.lay = _Layout()
        self.mla = self._mla()
        self.moe, self.moe_layer_ids = self._moe()
        self.dense_layers = self.layers - len(self.moe_layer_ids)
        if self.dense_layers and self.intermediate is None:
            raise ConfigError(f"{c.label}: missing 'intermediate_size' for the dense feed-forward layers")

    def _mla(self) -> MlaSpec | None:
        if self.model_type not in ("deepseek_v2", "deepseek_v3"):
            return None
        c = self.c
        mla = MlaSpec(kv_lora_rank=c.int("kv_lora_rank"), q_lora_rank=c.int("q_lora_rank", default=None),
                      qk_nope_head_dim=c.int("qk_nope_head_dim"), qk_rope_head_dim=c.int("qk_rope_head_dim"),
                      v_head_dim=c.int("v_head_dim"))
        self.head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        self.v_head_dim = mla.v_head_dim
        self.kv_heads = self.heads  # transformers' DeepSeek attention expands K/V to every head
        return mla

    def _moe(self) -> tuple[MoeSpec | None, list[int]]:
        """Which layers are sparse, and their experts."""
        c, model_type, layers = self.c, self.model_type, self.layers
        num_experts = c.int("num_local_experts", "n_routed_experts", "num_experts", default=0, minimum=0)
        if not num_experts:
            return None, []
        if model_type in ("deepseek_v2", "deepseek_v3"):
            first_dense = c.int("first_k_dense_replace", default=0, minimum=0)
            freq = c.int("moe_layer_freq", default=1)
            ids = [i for i in range(layers) if i >= first_dense and i % freq == 0]
        elif model_type in ("qwen2_moe", "qwen3_moe"):
            step = c.int("decoder_sparse_step", default=1)
            dense_only = set(c.list("mlp_only_layers") or [])
            ids = [i for i in range(layers) if i not in dense_only and (i + 1) % step == 0]
        else:
            ids = list(range(layers))
        expert_width = c.int("moe_intermediate_size", "intermediate_size")
        shared_count = c.int("n_shared_experts", default=0, minimum=0)
        shared_width = c.int("shared_expert_intermediate_size", default=0, minimum=0)
        if model_type in ("deepseek_v2", "deepseek_v3"):
            shared_width = expert_width * shared_count
        elif shared_width:
            shared_count = 1
        top_k_keys = ("num_experts_per_tok", "num_experts_per_token", "experts_per_token", "moe_topk")
        top_k = c.int(*top_k_keys, default=None) if model_type == "deepseek_v2" else c.int(*top_k_keys)
        if top_k is None:
            # configuration_deepseek_v2.py (transformers 5.25): num_experts_per_tok defaults to None; the model
            # built from such a config has well-defined weights but cannot run (torch.topk with k=None).
            top_k = num_experts
            self.notes.append(f"num_experts_per_tok is unset: each token is taken to reach all {num_experts} "
                              "routed experts (an upper bound on the active parameters and the MoE activations)")
        moe = MoeSpec(
            num_experts=num_experts,
            experts_per_token=top_k,
            expert_intermediate_size=expert_width, num_shared_experts=shared_count,
            shared_expert_intermediate_size=shared_width, num_moe_layers=len(ids),
            num_dense_layers=layers - len(ids))
        return moe, ids

    def attention(self, prefix: str, n: int, loaded: bool = True) -> None:
        lay, hidden, heads, mla = self.lay, self.hidden, self.heads, self.mla
        if mla is not None:
            qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
            if mla.q_lora_rank:
                lay.linear(f"{prefix}.q_a_proj", mla.q_lora_rank, hidden, n, bias=self.qkv_bias, loaded=loaded)
                lay.norm(f"{prefix}.q_a_layernorm", mla.q_lora_rank, n, loaded=loaded)
                lay.linear(f"{prefix}.q_b_proj", heads * qk_dim, mla.q_lora_rank, n, loaded=loaded)
            else:
                lay.linear(f"{prefix}.q_proj", heads * qk_dim, hidden, n, loaded=loaded)
            lay.linear(f"{prefix}.kv_a_proj_with_mqa", mla.kv_lora_rank + mla.qk_rope_head_dim, hidden, n,
                       bias=self.qkv_bias, loaded=loaded)
            lay.norm(f"{prefix}.kv_a_layernorm", mla.kv_lora_rank, n, loaded=loaded)
            lay.linear(f"{prefix}.kv_b_proj", heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank,
                       n, loaded=loaded)
            lay.linear(f"{prefix}.o_proj", hidden, heads * mla.v_head_dim, n, bias=self.qkv_bias, loaded=loaded)
            return
        head_dim, kv_heads, model_type = self.head_dim, self.kv_heads, self.model_type
        lay.linear(f"{prefix}.q_proj", heads * head_dim, hidden, n, bias=self.qkv_bias, loaded=loaded)
        lay.linear(f"{prefix}.k_proj", kv_heads * head_dim, hidden, n, bias=self.qkv_bias, loaded=loaded)
        lay.linear(f"{prefix}.v_proj", kv_heads * head_dim, hidden, n, bias=self.qkv_bias, loaded=loaded)
        lay.linear(f"{prefix}.o_proj", hidden, heads * head_dim, n, bias=self.o_bias, loaded=loaded)
        if model_type in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3"):
            # per-head RMSNorm on q and k (modeling_qwen3.py / modeling_gemma3.py: q_norm, k_norm)
            lay.norm(f"{prefix}.q_norm", head_dim, n, loaded=loaded)
            lay.norm(f"{prefix}.k_norm", head_dim, n, loaded=loaded)
        if model_type in ("olmoe", "olmo2"):
            # modeling_olmoe.py: q_norm over all query heads, k_norm over all key heads
            lay.norm(f"{prefix}.q_norm", heads * head_dim, n, loaded=loaded)
            lay.norm(f"{prefix}.k_norm", kv_heads * head_dim, n, loaded=loaded)
        if model_type == "gpt_oss":
            # modeling_gpt_oss.py: learned attention sinks, one logit per head
            lay.add(f"{prefix}.sinks", (heads,), R.OTHER, n, loaded=loaded)

    def dense_mlp(self, prefix: str, width: int, n: int, loaded: bool = True) -> None:
        lay, hidden, bias = self.lay, self.hidden, self.mlp_bias
        if self.gated:
            lay.linear(f"{prefix}.gate_proj", width, hidden, n, bias=bias, loaded=loaded)
            lay.linear(f"{prefix}.up_proj", width, hidden, n, bias=bias, loaded=loaded)
            lay.linear(f"{prefix}.down_proj", hidden, width, n, bias=bias, loaded=loaded)
        else:
            lay.linear(f"{prefix}.c_fc", width, hidden, n, bias=bias, loaded=loaded)
            lay.linear(f"{prefix}.c_proj", hidden, width, n, bias=bias, loaded=loaded)

    def moe_mlp(self, prefix: str, n: int, loaded: bool = True) -> None:
        moe, lay, hidden, model_type = self.moe, self.lay, self.hidden, self.model_type
        assert moe is not None
        E, w = moe.num_experts, moe.expert_intermediate_size
        if model_type == "gpt_oss":
            # modeling_gpt_oss.py: router with bias; experts as fused 3-D tensors with biases
            lay.add(f"{prefix}.router.weight", (E, hidden), R.ROUTER, n, loaded=loaded)
            lay.add(f"{prefix}.router.bias", (E,), R.ROUTER, n, loaded=loaded)
            lay.add(f"{prefix}.experts.gate_up_proj", (E, 2 * w, hidden), R.EXPERT_LINEAR, n, loaded=loaded)
            lay.add(f"{prefix}.experts.gate_up_proj_bias", (E, 2 * w), R.BIAS, n, loaded=loaded)
            lay.add(f"{prefix}.experts.down_proj", (E, hidden, w), R.EXPERT_LINEAR, n, loaded=loaded)
            lay.add(f"{prefix}.experts.down_proj_bias", (E, hidden), R.BIAS, n, loaded=loaded)
            return
        lay.add(f"{prefix}.gate.weight", (E, hidden), R.ROUTER, n, loaded=loaded)
        if model_type == "deepseek_v3" and self.c.str("topk_method", default="noaux_tc") == "noaux_tc":
            # modeling_deepseek_v3.py: e_score_correction_bias for aux-loss-free balancing
            lay.add(f"{prefix}.gate.e_score_correction_bias", (E,), R.ROUTER, n, loaded=loaded)
        for proj, shape in (("gate_proj", (w, hidden)), ("up_proj", (w, hidden)), ("down_proj", (hidden, w))):
            lay.add(f"{prefix}.experts.{proj}.weight", shape, R.EXPERT_LINEAR, n * E, loaded=loaded)
        if moe.num_shared_experts and moe.shared_expert_intermediate_size:
            name = "shared_experts" if model_type in ("deepseek_v2", "deepseek_v3") else "shared_expert"
            self.dense_mlp(f"{prefix}.{name}", moe.shared_expert_intermediate_size, n, loaded=loaded)
            if model_type == "qwen2_moe":
                # modeling_qwen2_moe.py: sigmoid gate on the shared expert's output
                lay.add(f"{prefix}.shared_expert_gate.weight", (1, hidden), R.ROUTER, n, loaded=loaded)

    def decoder_layers(self, prefix: str, n_dense: int, n_moe: int, loaded: bool = True) -> None:
        norms = 4 if self.model_type in ("gemma2", "gemma3_text", "gemma3") else 2
        self.attention(f"{prefix}.self_attn", n_dense + n_moe, loaded)
        self.lay.norm(f"{prefix}.norms", self.hidden, norms * (n_dense + n_moe), bias=self.layer_norm, loaded=loaded)
        self.dense_mlp(f"{prefix}.mlp", self.intermediate or 0, n_dense, loaded)
        if n_moe:
            self.moe_mlp(f"{prefix}.mlp", n_moe, loaded)

    def mtp_layers(self) -> None:
        """DeepSeek-V3 multi-token prediction (modeling in DeepSeek-V3's inference/model.py and the checkpoint's
        model.layers.61.*): per module an embedding copy, enorm/hnorm, eh_proj (2h -> h), one MoE decoder
        layer and a shared head (norm + vocab projection). Transformers and vLLM skip them unless speculative
        decoding is on, so they are marked not loaded."""
        lay, hidden, vocab, mtp = self.lay, self.hidden, self.vocab, self.mtp
        lay.add("mtp.embed_tokens.weight", (vocab, hidden), R.EMBEDDING, mtp, loaded=False)
        lay.norm("mtp.enorm", hidden, mtp, loaded=False)
        lay.norm("mtp.hnorm", hidden, mtp, loaded=False)
        # eh_proj is kept in bf16 in the FP8 checkpoint: only then do the stored elements add up to the
        # Hub's safetensors total (tests/test_params.py), so it is not a quantizable linear here.
        lay.add("mtp.eh_proj.weight", (hidden, 2 * hidden), R.OTHER, mtp, loaded=False)
        self.decoder_layers("mtp.layer", 0 if self.moe else mtp, mtp if self.moe else 0, loaded=False)
        lay.norm("mtp.shared_head.norm", hidden, mtp, loaded=False)
        lay.add("mtp.shared_head.head.weight", (vocab, hidden), R.LM_HEAD, mtp, loaded=False)
        self.notes.append(f"{mtp} multi-token-prediction layer(s) ship in the checkpoint; engines load them only "
                          "for speculative decoding, so weights leave them out")

    def build(self) -> ModelSpec:
        c, lay, moe = self.c, self.lay, self.moe
        lay.add("embed_tokens.weight", (self.vocab, self.hidden), R.EMBEDDING)
        self.decoder_layers("layers", self.dense_layers, len(self.moe_layer_ids))
        lay.norm("norm", self.hidden, 1, bias=self.layer_norm)
        if not self.tied:
            lay.add("lm_head.weight", (self.vocab, self.hidden), R.LM_HEAD)
        if self.mtp:
            self.mtp_layers()
        intermediate = self.intermediate
        return ModelSpec(
            model_type=self.model_type, architectures=tuple(c.list("architectures") or ()),
            num_hidden_layers=self.layers, hidden_size=self.hidden, vocab_size=self.vocab,
            num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
            v_head_dim=self.v_head_dim,
            intermediate_size=intermediate or moe.expert_intermediate_size if moe else intermediate or 0,
            ffn_gated=self.gated, hidden_act=c.str("hidden_act", "hidden_activation", default="silu"),
            mla=self.mla, moe=moe, layer_windows=_layer_windows(c, self.layers, self.model_type),
            tie_word_embeddings=self.tied, max_position_embeddings=_max_positions(c),
            native_dtype=_native_dtype(c), quantization=parse_quantization_config(c), mtp_layers=self.mtp,
            norm_kind="layer" if self.layer_norm else "rms", tensors=tuple(lay.groups), notes=tuple(self.notes))


def _kimi_k2(c: ConfigReader, model_type: str) -> ModelSpec:
    # Kimi K2 runs on DeepSeek-V3's modeling code (its config.json: "architectures": ["DeepseekV3ForCausalLM"],
    # with model_type kimi_k2 inside Kimi K2.5's text_config).
    spec = _llama_like(c, "deepseek_v3")
    return spec.model_copy(update={"model_type": model_type})


def _phi3(c: ConfigReader, model_type: str) -> ModelSpec:
    # modeling_phi3.py fuses q/k/v into qkv_proj and gate/up into gate_up_proj: same parameter count as
    # the separate projections, so the Llama layout applies.
    return _llama_like(c, "phi3")


# ------------------------------------------------------------------------------------------------
# Families with their own module trees.
# ------------------------------------------------------------------------------------------------


def _gpt2(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gpt2.py: learned positions, LayerNorm with bias, Conv1D projections with bias, tied head."""
    hidden = c.int("n_embd", "hidden_size")
    layers = c.int("n_layer", "num_hidden_layers")
    heads = c.int("n_head", "num_attention_heads")
    vocab = c.int("vocab_size")
    positions = c.int("n_positions", "n_ctx", "max_position_embeddings")
    inner = c.int("n_inner", default=4 * hidden)
    if hidden % heads:
        raise ConfigError(f"{c.label}: n_embd {hidden} is not divisible by n_head {heads}")
    tied = c.bool("tie_word_embeddings", default=True)
    lay = _Layout()
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.add("wpe.weight", (positions, hidden), R.POSITION_EMBEDDING)
    lay.norm("h.ln_1", hidden, layers, bias=True)
    lay.linear("h.attn.c_attn", 3 * hidden, hidden, layers, bias=True)
    lay.linear("h.attn.c_proj", hidden, hidden, layers, bias=True)
    lay.norm("h.ln_2", hidden, layers, bias=True)
    lay.linear("h.mlp.c_fc", inner, hidden, layers, bias=True)
    lay.linear("h.mlp.c_proj", hidden, inner, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=heads,
                       vocab=vocab, intermediate=inner, tied=tied, positions=positions,
                       act=c.str("activation_function", default="gelu_new"))


def _gpt_bigcode(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gpt_bigcode.py: GPT-2 layout with multi-query attention (one shared K/V head)."""
    hidden = c.int("n_embd", "hidden_size")
    layers = c.int("n_layer", "num_hidden_layers")
    heads = c.int("n_head", "num_attention_heads")
    vocab = c.int("vocab_size")
    positions = c.int("n_positions", "max_position_embeddings")
    inner = c.int("n_inner", default=4 * hidden)
    head_dim = hidden // heads
    kv_heads = 1 if c.bool("multi_query", default=True) else heads
    tied = c.bool("tie_word_embeddings", default=True)
    lay = _Layout()
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.add("wpe.weight", (positions, hidden), R.POSITION_EMBEDDING)
    lay.norm("h.ln_1", hidden, layers, bias=True)
    lay.linear("h.attn.c_attn", hidden + 2 * kv_heads * head_dim, hidden, layers, bias=True)
    lay.linear("h.attn.c_proj", hidden, hidden, layers, bias=True)
    lay.norm("h.ln_2", hidden, layers, bias=True)
    lay.linear("h.mlp.c_fc", inner, hidden, layers, bias=True)
    lay.linear("h.mlp.c_proj", hidden, inner, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                       vocab=vocab, intermediate=inner, tied=tied, positions=positions,
                       act=c.str("activation_function", default="gelu_pytorch_tanh"))


def _opt(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_opt.py: learned positions with an offset of 2, optional project_in/out, biases, tied head."""
    hidden = c.int("hidden_size")
    layers = c.int("num_hidden_layers")
    heads = c.int("num_attention_heads")
    vocab = c.int("vocab_size")
    ffn = c.int("ffn_dim")
    positions = c.int("max_position_embeddings")
    word_dim = c.int("word_embed_proj_dim", default=hidden)
    bias = c.bool("enable_bias", default=True)
    affine = c.bool("layer_norm_elementwise_affine", default=True)
    tied = c.bool("tie_word_embeddings", default=True)
    lay = _Layout()
    lay.add("embed_tokens.weight", (vocab, word_dim), R.EMBEDDING)
    # OPTLearnedPositionalEmbedding: num_embeddings + 2 (the offset for padding, see its docstring)
    lay.add("embed_positions.weight", (positions + 2, hidden), R.POSITION_EMBEDDING)
    if word_dim != hidden:
        lay.linear("project_in", hidden, word_dim, 1)
        lay.linear("project_out", word_dim, hidden, 1)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        lay.linear(f"layers.self_attn.{proj}", hidden, hidden, layers, bias=bias)
    if affine:
        lay.norm("layers.self_attn_layer_norm", hidden, layers, bias=True)
        lay.norm("layers.final_layer_norm", hidden, layers, bias=True)
    lay.linear("layers.fc1", ffn, hidden, layers, bias=bias)
    lay.linear("layers.fc2", hidden, ffn, layers, bias=bias)
    if c.bool("do_layer_norm_before", default=True) and not c.bool("_remove_final_layer_norm", default=False):
        lay.norm("final_layer_norm", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, word_dim), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=heads,
                       vocab=vocab, intermediate=ffn, tied=tied, positions=positions,
                       act=c.str("activation_function", default="relu"))


def _gpt_neox(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_gpt_neox.py (Pythia, GPT-NeoX-20B): fused QKV with bias, LayerNorms, untied embed_out."""
    hidden = c.int("hidden_size")
    layers = c.int("num_hidden_layers")
    heads = c.int("num_attention_heads")
    vocab = c.int("vocab_size")
    inner = c.int("intermediate_size")
    bias = c.bool("attention_bias", default=True)
    tied = c.bool("tie_word_embeddings", default=False)
    lay = _Layout()
    lay.add("embed_in.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("layers.input_layernorm", hidden, layers, bias=True)
    lay.norm("layers.post_attention_layernorm", hidden, layers, bias=True)
    lay.linear("layers.attention.query_key_value", 3 * hidden, hidden, layers, bias=bias)
    lay.linear("layers.attention.dense", hidden, hidden, layers, bias=bias)
    lay.linear("layers.mlp.dense_h_to_4h", inner, hidden, layers, bias=True)
    lay.linear("layers.mlp.dense_4h_to_h", hidden, inner, layers, bias=True)
    lay.norm("final_layer_norm", hidden, 1, bias=True)
    if not tied:
        lay.add("embed_out.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=heads,
                       vocab=vocab, intermediate=inner, tied=tied, positions=_max_positions(c),
                       act=c.str("hidden_act", default="gelu"))


def _falcon(c: ConfigReader, model_type: str) -> ModelSpec:
    """modeling_falcon.py: fused QKV (multi-query or grouped), parallel attention+MLP, LayerNorms, tied head."""
    hidden = c.int("hidden_size", "n_embed")
    layers = c.int("num_hidden_layers", "n_layer")
    heads = c.int("num_attention_heads", "n_head")
    vocab = c.int("vocab_size")
    head_dim = hidden // heads
    new_arch = c.bool("new_decoder_architecture", default=False)
    if new_arch:
        kv_heads = c.int("num_kv_heads", "n_head_kv", default=heads)
    elif c.bool("multi_query", default=True):
        kv_heads = 1
    else:
        kv_heads = heads
    _check_heads(c, heads, kv_heads)
    ffn = c.int("ffn_hidden_size", default=4 * hidden)
    bias = c.bool("bias", default=False)
    parallel = c.bool("parallel_attn", default=True)
    tied = c.bool("tie_word_embeddings", default=True)
    lay = _Layout()
    lay.add("word_embeddings.weight", (vocab, hidden), R.EMBEDDING)
    qkv_out = (heads + 2 * kv_heads) * head_dim if (new_arch or kv_heads == 1) else 3 * hidden
    lay.linear("h.self_attention.query_key_value", qkv_out, hidden, layers, bias=bias)
    lay.linear("h.self_attention.dense", hidden, hidden, layers, bias=bias)
    lay.linear("h.mlp.dense_h_to_4h", ffn, hidden, layers, bias=bias)
    lay.linear("h.mlp.dense_4h_to_h", hidden, ffn, layers, bias=bias)
    if new_arch and c.int("num_ln_in_parallel_attn", default=2) == 2:
        lay.norm("h.ln_attn", hidden, layers, bias=True)
        lay.norm("h.ln_mlp", hidden, layers, bias=True)
    else:
        lay.norm("h.input_layernorm", hidden, layers, bias=True)
        if not parallel:
            lay.norm("h.post_attention_layernorm", hidden, layers, bias=True)
    lay.norm("ln_f", hidden, 1, bias=True)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                       vocab=vocab, intermediate=ffn, tied=tied, positions=_max_positions(c), act="gelu")


def _chatglm(c: ConfigReader, model_type: str) -> ModelSpec:
    """THUDM's modeling_chatglm.py (remote code, read as JSON only): MQA via multi_query_group_num,
    QKV bias, SwiGLU whose dense_h_to_4h is 2 x ffn_hidden_size wide, untied output_layer."""
    hidden = c.int("hidden_size")
    layers = c.int("num_layers", "num_hidden_layers")
    heads = c.int("num_attention_heads")
    head_dim = c.int("kv_channels", default=hidden // heads)
    kv_heads = c.int("multi_query_group_num") if c.bool("multi_query_attention", default=False) else heads
    _check_heads(c, heads, kv_heads)
    vocab = c.int("padded_vocab_size", "vocab_size")
    ffn = c.int("ffn_hidden_size")
    qkv_bias = c.bool("add_qkv_bias", default=False)
    linear_bias = c.bool("add_bias_linear", default=False)
    rms = c.bool("rmsnorm", default=True)
    tied = c.bool("tie_word_embeddings", default=False)
    lay = _Layout()
    lay.add("embedding.word_embeddings.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("layers.input_layernorm", hidden, layers, bias=not rms)
    lay.linear("layers.self_attention.query_key_value", (heads + 2 * kv_heads) * head_dim, hidden, layers,
               bias=qkv_bias or linear_bias)
    lay.linear("layers.self_attention.dense", hidden, heads * head_dim, layers, bias=linear_bias)
    lay.norm("layers.post_attention_layernorm", hidden, layers, bias=not rms)
    lay.linear("layers.mlp.dense_h_to_4h", 2 * ffn, hidden, layers, bias=linear_bias)
    lay.linear("layers.mlp.dense_4h_to_h", hidden, ffn, layers, bias=linear_bias)
    if c.bool("post_layer_norm", default=True):
        lay.norm("final_layernorm", hidden, 1, bias=not rms)
    if not tied:
        lay.add("output_layer.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                       vocab=vocab, intermediate=ffn, tied=tied, positions=_max_positions(c), act="swiglu",
                       head_dim=head_dim, gated=True, rms=rms)


def _qwen_v1(c: ConfigReader, model_type: str) -> ModelSpec:
    """Qwen's first-generation modeling_qwen.py (remote code, read as JSON only): c_attn with bias,
    SwiGLU where ffn_hidden_size is twice the width of w1/w2, untied lm_head."""
    hidden = c.int("hidden_size", "n_embd")
    layers = c.int("num_hidden_layers", "n_layer")
    heads = c.int("num_attention_heads", "n_head")
    head_dim = c.int("kv_channels", default=hidden // heads)
    vocab = c.int("padded_vocab_size", "vocab_size")
    width = c.int("intermediate_size", "ffn_hidden_size") // 2
    tied = c.bool("tie_word_embeddings", default=False)
    lay = _Layout()
    lay.add("wte.weight", (vocab, hidden), R.EMBEDDING)
    lay.norm("h.ln_1", hidden, layers)
    lay.linear("h.attn.c_attn", 3 * heads * head_dim, hidden, layers, bias=True)
    lay.linear("h.attn.c_proj", hidden, heads * head_dim, layers, bias=not c.bool("no_bias", default=True))
    lay.norm("h.ln_2", hidden, layers)
    lay.linear("h.mlp.w1", width, hidden, layers)
    lay.linear("h.mlp.w2", width, hidden, layers)
    lay.linear("h.mlp.c_proj", hidden, width, layers)
    lay.norm("ln_f", hidden, 1)
    if not tied:
        lay.add("lm_head.weight", (vocab, hidden), R.LM_HEAD)
    return _plain_spec(c, model_type, lay, hidden=hidden, layers=layers, heads=heads, kv_heads=heads,
                       vocab=vocab, intermediate=width, tied=tied, positions=_max_positions(c), act="silu",
                       head_dim=head_dim, gated=True, rms=True)


def _plain_spec(c: ConfigReader, model_type: str, lay: _Layout, *, hidden: int, layers: int, heads: int,
                kv_heads: int, vocab: int, intermediate: int, tied: bool, positions: int | None, act: str,
                head_dim: int | None = None, gated: bool = False, rms: bool = False) -> ModelSpec:
    return ModelSpec(
        model_type=model_type,
        architectures=tuple(c.list("architectures") or ()),
        num_hidden_layers=layers,
        hidden_size=hidden,
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        v_head_dim=head_dim or hidden // heads,
        intermediate_size=intermediate,
        ffn_gated=gated,
        hidden_act=act,
        layer_windows=(None,) * layers,
        tie_word_embeddings=tied,
        max_position_embeddings=positions,
        native_dtype=_native_dtype(c),
        quantization=parse_quantization_config(c),
        norm_kind="rms" if rms else "layer",
        tensors=tuple(lay.groups),
    )


# ------------------------------------------------------------------------------------------------
# Meta's params.json (the original checkpoints of meta-llama/Llama-2-7b and friends)
# ------------------------------------------------------------------------------------------------

# Meta's Llama / Llama 2 SentencePiece tokenizer has 32,000 pieces; their params.json says -1 and the
# model takes the size from tokenizer.model (meta-llama/llama, llama/model.py and tokenizer.py).
LLAMA2_TOKENIZER_VOCAB = 32000


def meta_params_to_spec(raw: dict[str, Any], *, label: str, tokenizer_vocab: int | None = None) -> ModelSpec:
    """Meta's params.json -> ModelSpec. FFN width as in meta-llama/llama, llama/model.py FeedForward:
    hidden = int(2 * 4 * dim / 3); hidden = int(ffn_dim_multiplier * hidden) when set; rounded up to
    a multiple of ``multiple_of``."""
    c = ConfigReader(raw, label=label)
    dim = c.int("dim")
    layers = c.int("n_layers")
    heads = c.int("n_heads")
    kv_heads = c.int("n_kv_heads", default=heads)
    multiple_of = c.int("multiple_of", default=256)
    hidden = int(2 * 4 * dim / 3)
    multiplier = c.float("ffn_dim_multiplier", default=None)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    ffn = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    vocab_raw = raw.get("vocab_size", -1)
    notes = []
    if vocab_raw in (-1, None):
        vocab = tokenizer_vocab or LLAMA2_TOKENIZER_VOCAB
        if tokenizer_vocab is None:
            notes.append(f"params.json leaves vocab_size to the tokenizer: assumed {LLAMA2_TOKENIZER_VOCAB} "
                         "(Llama / Llama 2 tokenizer.model)")
    else:
        vocab = c.int("vocab_size")
    hf_like = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": dim,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    spec = _llama_like(ConfigReader(hf_like, label=label), "llama")
    return spec.model_copy(update={"notes": spec.notes + tuple(notes), "native_dtype": "bfloat16"})


# ------------------------------------------------------------------------------------------------

_FAMILIES: dict[str, Callable[[ConfigReader, str], ModelSpec]] = {
    **dict.fromkeys((
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "gemma3_text", "olmo", "olmo2", "olmoe", "granite", "deepseek_v2", "deepseek_v3", "gpt_oss",
        "starcoder2", "yi", "internlm2", "cohere", "ministral", "mistral3_text", "smollm3", "exaone",
    ), _llama_like),
    "phi3": _phi3,
    "kimi_k2": _kimi_k2,
    "gpt2": _gpt2,
    "gpt_bigcode": _gpt_bigcode,
    "opt": _opt,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "RefinedWeb": _falcon,
    "RefinedWebModel": _falcon,
    "chatglm": _chatglm,
    "qwen": _qwen_v1,
    **HYBRID_FAMILIES,
    **CLASSIC_FAMILIES,
    **LLAMA_KIN_FAMILIES,
    **RECURRENT_FAMILIES,
    **SPARSE_FAMILIES,
}

# Multimodal wrappers whose language model lives in ``text_config`` (default text model_type when the
# text_config omits it).
_TEXT_CONFIG_WRAPPERS = {
    "gemma3": "gemma3_text",
    "llava": "llama",
    "llava_next": "llama",
    "mistral3": "mistral",
    "llama4": "llama4_text",
    "qwen3_5": "qwen3_5_text",
    "gemma4": "gemma4_text",
    "kimi_k25": "kimi_k2",
    "qwen3_5_moe": "qwen3_5_moe_text",
    "qwen2_vl": "qwen2",
    "qwen2_5_vl": "qwen2",
    "mllama": "mllama_text",
    "paligemma": "gemma",
}


# Remote-code configs that omit model_type (THUDM/chatglm3-6b) are recognised by their architecture.
_ARCHITECTURE_TYPES = {
    "ChatGLMModel": "chatglm",
    "ChatGLMForConditionalGeneration": "chatglm",
    "QWenLMHeadModel": "qwen",
}


def _model_type_from_architectures(c: ConfigReader) -> str | None:
    for arch in c.list("architectures") or ():
        if arch in _ARCHITECTURE_TYPES:
            return _ARCHITECTURE_TYPES[arch]
    return None


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def config_to_spec(raw: dict[str, Any], *, label: str = "config.json") -> ModelSpec:
    """Parse a Hugging Face config.json dict into a ModelSpec. Raises ConfigError/UnsupportedModelError."""
    c = ConfigReader(raw, label=label)
    model_type = c.str("model_type") or _model_type_from_architectures(c)
    if model_type is None:
        if "dim" in raw and "n_layers" in raw:
            return meta_params_to_spec(raw, label=label)
        raise ConfigError(f"{label}: no 'model_type' key", hint="is this a Hugging Face config.json?")
    text_cfg = raw.get("text_config")
    if isinstance(text_cfg, dict) and model_type not in _FAMILIES and (model_type in _TEXT_CONFIG_WRAPPERS
                                                                      or "num_hidden_layers" not in raw):
        inner = dict(text_cfg)
        inner.setdefault("model_type", _TEXT_CONFIG_WRAPPERS.get(model_type, model_type))
        for key in ("torch_dtype", "dtype", "quantization_config", "architectures", "tie_word_embeddings"):
            if key in raw and key not in inner:
                inner[key] = raw[key]
        inner = _apply_text_defaults(inner)
        spec = config_to_spec(inner, label=f"{label} (text_config)")
        from gpuplan.models.vision import vision_parameters

        vision = vision_parameters(model_type, raw, spec.hidden_size)
        if vision is None:
            note = ("multimodal checkpoint: the text model is estimated; the vision tower and projector are not "
                    "counted, and image tokens count as sequence")
            return spec.model_copy(update={"notes": spec.notes + (note,)})
        tower = TensorGroup(name="vision_tower", shape=(vision,), role=R.OTHER)
        note = (f"multimodal checkpoint: the vision tower and projector ({vision:,} parameters) are counted in the "
                "weights; their activations are not modelled, and image tokens count as sequence")
        return spec.model_copy(update={"tensors": spec.tensors + (tower,), "vision_parameters": vision,
                                       "notes": spec.notes + (note,)})
    parser = _FAMILIES.get(model_type)
    if parser is None and has_state_layers(raw):
        return generic_decoder(c, model_type)
    if parser is None and state_keys(raw):
        raise UnsupportedModelError(
            f"{label}: model_type {model_type!r} is not known to gpuplan, and its config describes recurrent or "
            f"state-space layers ({', '.join(state_keys(raw)[:4])}) without a layer_types list saying which "
            "layers use them",
            hint="gpuplan cannot estimate its cache from this config; "
                 f"supported: {', '.join(supported_model_types())}")
    if parser is None:
        if all(k in raw for k in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                                  "intermediate_size", "vocab_size")):
            spec = _llama_like(c, model_type)
            return spec.model_copy(update={"notes": spec.notes + (
                f"model_type {model_type!r} is not known to gpuplan: read as a Llama-style decoder, so the "
                "parameter count may differ slightly from the checkpoint",)})
        raise UnsupportedModelError(
            f"{label}: model_type {model_type!r} is not supported",
            hint=f"supported: {', '.join(supported_model_types())}",
        )
    return parser(c, model_type)


# Defaults of config classes whose Hub configs omit keys (the class fills them in). Only families whose
# published configs rely on them are listed; each value is the class default in transformers.
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    # transformers/models/gemma3/configuration_gemma3.py, Gemma3TextConfig.__init__ defaults
    "gemma3_text": {
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "max_position_embeddings": 131072, "sliding_window": 4096, "sliding_window_pattern": 6,
        "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
    },
}


def _apply_text_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    defaults = _TEXT_DEFAULTS.get(cfg.get("model_type", ""))
    if not defaults:
        return cfg
    return {**defaults, **cfg}
