"""ModelSpec: the one normalized description of a decoder-only LLM.

Every config family (see ``gpuplan/models/families.py``) is parsed into a ModelSpec; nothing downstream
reads raw config keys. Besides the architectural figures that the KV-cache and activation formulas need,
a ModelSpec carries the model's **tensor layout**: every weight tensor group with its shape, how many
times it repeats, and its role. Parameter counts and weight bytes (quantized or not) are sums over that
layout, so they come out exact when the layout mirrors the checkpoint.
"""


import math
from enum import Enum
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TensorRole(str, Enum):
    """What a tensor is, which decides whether quantization schemes touch it.

    GPTQ, AWQ, bitsandbytes and FP8 checkpoints quantize the linear layers of the transformer blocks
    (``linear`` and ``expert_linear``); embeddings, norms, biases, routers and (usually) the lm_head stay in
    16-bit. Sources: transformers/integrations/bitsandbytes.py (``get_keys_to_not_convert`` keeps lm_head),
    AutoGPTQ/AutoAWQ quantize only ``nn.Linear`` modules inside the decoder layers.
    """

    EMBEDDING = "embedding"
    POSITION_EMBEDDING = "position_embedding"
    LINEAR = "linear"
    EXPERT_LINEAR = "expert_linear"
    NORM = "norm"
    BIAS = "bias"
    ROUTER = "router"
    LM_HEAD = "lm_head"
    OTHER = "other"


QUANTIZABLE_ROLES = frozenset({TensorRole.LINEAR, TensorRole.EXPERT_LINEAR})


class TensorGroup(BaseModel):
    """One weight tensor, repeated ``count`` times (once per layer that has it, per expert ...).

    For 2-D weights ``shape`` is (out_features, in_features) as torch.nn.Linear stores it.
    ``loaded`` is False for tensors that ship in the checkpoint but that inference engines skip by
    default (DeepSeek-V3 multi-token-prediction layers).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]
    count: int = 1
    role: TensorRole
    loaded: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def total_numel(self) -> int:
        return self.numel * self.count


class MlaSpec(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 section 2.1)."""

    model_config = ConfigDict(frozen=True)

    kv_lora_rank: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    index_heads: int = Field(default=0, ge=0, description="heads of a DeepSeek sparse-attention indexer, if any")

    @property
    def latent_dim(self) -> int:
        """Per-token, per-layer width of the compressed KV that MLA-aware engines cache."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class MoeSpec(BaseModel):
    """Mixture-of-experts feed-forward layers."""

    model_config = ConfigDict(frozen=True)

    num_experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    num_shared_experts: int = Field(default=0, ge=0)
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    num_moe_layers: int = Field(gt=0)
    num_dense_layers: int = Field(default=0, ge=0)


class QuantSpec(BaseModel):
    """A checkpoint's quantization, from config.json's ``quantization_config`` or a requested dtype."""

    model_config = ConfigDict(frozen=True)

    method: Literal["gptq", "awq", "bnb_4bit", "bnb_8bit", "fp8", "mxfp4", "compressed_tensors"]
    bits: int
    group_size: int | None = None
    """Weights per scale along the input dimension; None means one scale per output row (per channel)."""
    fp8_block: tuple[int, int] | None = None
    """FP8 block-wise scales (DeepSeek-V3: 128 x 128)."""
    fp8_strategy: Literal["tensor", "channel", "block"] | None = None
    bnb_double_quant: bool = False
    quantize_lm_head: bool = False
    modules_not_converted: tuple[str, ...] = ()
    source: Literal["checkpoint", "requested"] = "checkpoint"


class LayerCache(BaseModel):
    """What one decoder layer keeps per sequence while it generates, in elements (bytes follow from the dtype).

    ``kind`` says how it grows: ``attention`` keeps ``kv_heads x (key_dim + value_dim)`` per token (plus
    ``indexer_dim`` for the key cache of a DeepSeek sparse-attention indexer), all of the sequence when
    ``window`` is None, else the last ``window`` tokens (sliding or chunked layers). ``state`` layers
    (gated-delta-net / linear attention, Mamba, short convolutions) keep a fixed ``recurrent_elems`` and
    ``conv_elems`` per sequence whatever its length; ``hybrid`` layers keep both. ``none`` layers keep
    nothing (they reuse another layer's cache, or have no token mixer). ``compressed`` layers (DeepSeek-V4's
    compressed sparse and heavily compressed attention) keep a sliding window of per-token K/V like an
    attention layer, plus one ``compressed_dim`` entry per ``compress_rate`` tokens, the source tokens of the
    window being compressed (``buffer_dim`` each) and ``overlap_elems`` carried between windows.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["attention", "state", "hybrid", "none", "compressed"]
    """attention: per-token K/V; state: fixed per-sequence state; hybrid: both in one layer (Falcon-H1
    runs attention and Mamba side by side); none: nothing cached; compressed: a window of K/V plus compressed
    entries of the whole sequence (DeepSeek-V4)."""
    mixer: str = Field(description="the layer kind as its family names it: full_attention, mamba2, conv ...")
    kv_heads: int = Field(default=0, ge=0)
    key_dim: int = Field(default=0, ge=0)
    value_dim: int = Field(default=0, ge=0)
    indexer_dim: int = Field(default=0, ge=0)
    window: int | None = Field(default=None, gt=0)
    chunked: bool = False
    """A chunked layer (Llama 4) attends within fixed chunks; transformers keeps its cache like a sliding one."""
    recurrent_elems: int = Field(default=0, ge=0)
    conv_elems: int = Field(default=0, ge=0)
    conv_kernel: int = Field(default=0, ge=0)
    """Taps of the layer's causal convolution: transformers keeps that many columns per channel
    (``conv_elems`` = channels x taps), vLLM and SGLang one fewer."""
    recurrent_bytes: int | None = Field(default=None, gt=0)
    """Bytes per element of the recurrent state in transformers when it does not follow the model's dtype:
    4 where the torch path computes the state in float32 and the cache copies that dtype (the gated DeltaNet
    and Mamba-2 scans); None where it has the cache's dtype."""
    compress_rate: int = Field(default=0, ge=0, description="source tokens per compressed entry")
    compressed_dim: int = Field(default=0, ge=0, description="elements of one compressed entry")
    buffer_dim: int = Field(default=0, ge=0, description="elements kept per source token awaiting compression")
    overlap_elems: int = Field(default=0, ge=0, description="elements carried from one window to the next")

    @model_validator(mode="after")
    def _compressed_needs_a_rate(self) -> "LayerCache":
        if self.kind == "compressed" and self.compress_rate < 1:
            raise ValueError("a compressed layer cache needs compress_rate >= 1")
        return self

    @property
    def per_token_elems(self) -> int:
        return self.kv_heads * (self.key_dim + self.value_dim) + self.indexer_dim

    @property
    def fixed_elems(self) -> int:
        return self.recurrent_elems + self.conv_elems


class StateMixerSpec(BaseModel):
    """Geometry of a model's recurrent mixer, for the activations of its prefill (the cache is in
    ``LayerCache``): the gated DeltaNet of Qwen3-Next / Qwen3.5, or a Mamba-2 mixer."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["gated_delta_net", "mamba2"]
    heads: int = Field(gt=0, description="value heads (gated DeltaNet), SSM heads (Mamba-2)")
    key_heads: int = Field(default=0, ge=0)
    key_dim: int = Field(default=0, ge=0, description="gated DeltaNet key width")
    value_dim: int = Field(gt=0, description="value width per head (gated DeltaNet), head_dim (Mamba-2)")
    state_size: int = Field(default=0, ge=0, description="Mamba-2 d_state")
    groups: int = Field(default=1, gt=0)
    chunk: int = Field(default=0, ge=0, description="Mamba-2 chunk_size of the scan")
    in_proj: int = Field(default=0, ge=0, description="Mamba-2 in_proj width")
    conv_dim: int = Field(default=0, ge=0)


class ModelSpec(BaseModel):
    """Normalized architecture of a decoder-only language model."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    architectures: tuple[str, ...] = ()
    num_hidden_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0, description="query/key width per head")
    v_head_dim: int = Field(gt=0, description="value width per head")
    intermediate_size: int = Field(gt=0, description="FFN width of the dense layers")
    ffn_gated: bool = Field(description="gated FFN (SwiGLU/GeGLU: 3 matrices) or plain (2 matrices)")
    hidden_act: str = "silu"
    mla: MlaSpec | None = None
    moe: MoeSpec | None = None
    layer_windows: tuple[int | None, ...] = Field(
        description="per decoder layer: None for full attention, N for a sliding window of N tokens"
    )
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    native_dtype: str | None = None
    quantization: QuantSpec | None = None
    mtp_layers: int = 0
    norm_kind: Literal["rms", "layer"] = "rms"
    tensors: tuple[TensorGroup, ...]
    notes: tuple[str, ...] = ()
    vision_parameters: int = 0
    """Parameters of a vision tower/projector in a multimodal checkpoint (not part of the text model)."""
    state_mixer: StateMixerSpec | None = None
    layer_caches: tuple[LayerCache, ...] = ()
    """Per decoder layer, what it caches. Empty for the families whose every layer is attention with the
    uniform heads above and ``layer_windows`` spans (the cache follows from those); set, one per layer,
    for hybrid and per-layer-heterogeneous models, and then authoritative."""
    state_dtypes: tuple[tuple[str, str], ...] = ()
    """The recurrent-state dtypes the config asks for, as (key, value): ``mamba_ssm_dtype`` (Qwen3.5, read by
    SGLang and vLLM) and ``mamba_ssm_cache_dtype`` (Nemotron-H, read by vLLM). Engines decide which they read."""

    # ---- attention layout -------------------------------------------------------------------------
    @property
    def attention_kind(self) -> Literal["MHA", "GQA", "MQA", "MLA"]:
        if self.mla is not None:
            return "MLA"
        if self.num_key_value_heads == self.num_attention_heads:
            return "MHA"
        if self.num_key_value_heads == 1:
            return "MQA"
        return "GQA"

    @property
    def num_full_attention_layers(self) -> int:
        return sum(1 for w in self.layer_windows if w is None)

    @property
    def sliding_windows(self) -> tuple[int, ...]:
        return tuple(w for w in self.layer_windows if w is not None)

    @cached_property
    def has_state_layers(self) -> bool:
        return any(lc.kind in ("state", "hybrid") for lc in self.layer_caches)

    # ---- parameters -------------------------------------------------------------------------------
    @cached_property
    def parameters(self) -> int:
        """Every parameter in the checkpoint's text model (tied embeddings once), MTP layers included."""
        return sum(t.total_numel for t in self.tensors)

    @cached_property
    def loaded_parameters(self) -> int:
        """Parameters an inference engine loads (without checkpoint-only extras such as MTP layers)."""
        return sum(t.total_numel for t in self.tensors if t.loaded)

    @cached_property
    def active_parameters(self) -> int:
        """Parameters used per token: shared weights plus ``experts_per_token`` of the routed experts."""
        if self.moe is None:
            return self.loaded_parameters
        routed = sum(t.total_numel for t in self.tensors if t.loaded and t.role is TensorRole.EXPERT_LINEAR)
        return self.loaded_parameters - routed + routed * self.moe.experts_per_token // self.moe.num_experts

    def parameters_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.role.value] = out.get(t.role.value, 0) + t.total_numel
        return out
