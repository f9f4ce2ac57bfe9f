"""Memory of llama.cpp (llama-server, llama-cli) running a GGUF model on one CUDA GPU.

llama.cpp allocates four kinds of buffers and logs each at load (``model buffer``, ``KV buffer``,
``compute buffer``, ``output buffer``); this module computes each from the GGUF tensor table and the
settings, following the code of ggml-org/llama.cpp at commit 0c1e570 (2026-10-01). Source lines are named
beside each rule; the measurements that check them (H200, CUDA 13.0) are in tests/test_gguf.py.

* **Weights.** ``--n-gpu-layers N`` offloads whole layers, counted over ``block_count + 1`` slots, the last
  slot being the output layer (``output.weight``, ``output_norm``): the GPU gets the output layer and the
  last ``N - 1`` repeating layers (src/llama-model.cpp, load_tensors: ``i_gpu_start = max(n_layer + 1 -
  n_gpu_layers, 0)``; the output layer goes to the GPU first since PR #18148). The input layer
  (``token_embd``) always stays in host memory ("there is very little benefit to offloading the input
  layer", same function). A model without ``output.weight`` (tied embeddings) gets a copy of ``token_embd``
  as its output layer on that layer's device (src/llama-model-loader.cpp, TENSOR_DUPLICATED).
* **KV cache.** Per layer with KV, ``K: row_size(type_k, n_embd_k_gqa) x cells`` and the same for V
  (src/llama-kv-cache.cpp); MLA models (DeepSeek) store K only. ``cells`` is the context padded to 256 (src/
  llama-context.cpp: ``GGML_PAD(n_ctx, 256)``); with ``--parallel P`` and no ``--kv-unified`` the context is
  split into P streams of ``pad(n_ctx / P, 256)`` cells -- the total is the same. Sliding-window layers keep
  ``pad(min(n_ctx_seq, n_swa x (unified ? P : 1) + n_ubatch), 256)`` cells per stream unless ``--swa-full``
  (src/llama-kv-cache-iswa.cpp). Each layer's cache sits on that layer's device (in host memory with
  ``--no-kv-offload``).
* **Recurrent state.** Hybrid architectures (src/llama-arch.cpp ``llm_arch_is_hybrid``: Qwen3-Next, Qwen3.5,
  Nemotron-H, Falcon-H1, Jamba, Granite-Hybrid, LFM2 ...) keep, per recurrent layer, two f32 tensors
  ``r_l [n_embd_r, rows]`` and ``s_l [n_embd_s, rows]`` with ``rows = max(1, n_seq_max) x (1 + n_rs_seq)``
  (src/llama-memory-recurrent.cpp; ``GGML_TYPE_F32`` and ``std::max(1, n_seq_max)`` in
  src/llama-model.cpp ``create_memory``; ``n_rs_seq`` is 0 without speculative decoding,
  common/common.h ``need_n_rs_seq``). ``n_embd_r = (ssm.conv_kernel - 1) x (ssm.inner_size + 2 x
  ssm.group_count x ssm.state_size)`` (LFM2: ``embedding_length x (shortconv.l_cache - 1)``) and ``n_embd_s =
  ssm.state_size x ssm.inner_size`` (src/llama-hparams.cpp). Attention layers keep KV cells as above; a recurrent
  layer has none, except in Falcon-H1 whose layers run both (the ``filter_attn`` / ``filter_recr`` of
  ``create_memory``). Which layers are recurrent: src/models/<arch>.cpp (``is_recr_impl``). Rules read in the
  llama.cpp vendored by llama-cpp-python 0.3.36 (PyPI sdist, ``vendor/llama.cpp/src``).
* **Compute buffer.** llama.cpp reserves the worst-case graph (``n_ubatch`` tokens, every output) and keeps
  one buffer per device of its peak (src/llama-context.cpp, sched_reserve). On the GPU the peak is the larger
  of the output step, ``n_ubatch x (n_vocab + n_embd) x 4`` bytes (f32 logits and their input), and the
  attention step of a layer, which without flash attention holds the f32 scores and mask
  ``n_ubatch x n_kv x (n_head + 1) x 4`` bytes. Layers or the output layer left in host memory have their
  matrix products run on the GPU for batches of 32 tokens or more (ggml-cuda.cu, offload_op), which copies
  that layer's weights into the compute buffer.
* **Runtime.** The CUDA context, cuBLAS and ggml's CUDA pool, not in any logged buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpuplan.calc.workload import Workload
from gpuplan.engines.base import EngineOptions, Hardware, PrecisionRequest, tokens_validator
from gpuplan.errors import InputError

if TYPE_CHECKING:  # the GGUF reader is imported when a GGUF file is estimated, not to list this engine's flags
    from gpuplan.models.gguf import GgmlType, GgufModel
from gpuplan.results import EngineEstimate, LlamaCppRun
from gpuplan.units import MiB

__all__ = [
    "LlamaCppSettings",
    "LlamaCppMemory",
    "estimate_llamacpp",
    "KV_CACHE_TYPES",
    "LLAMACPP_CUDA_RUNTIME_BYTES",
]

FlashAttn = Literal["auto", "on", "off"]

# --cache-type-k / --cache-type-v accept these (common/arg.cpp: kv_cache_types).
KV_CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# Defaults of common_params (common/common.h): n_batch 2048, n_ubatch 512.
DEFAULT_N_BATCH = 2048
DEFAULT_N_UBATCH = 512
# llama-server with -np left at -1 (auto) uses 4 slots and a unified KV cache (tools/server/server.cpp).
SERVER_AUTO_PARALLEL = 4
# src/llama-context.cpp: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256); the SWA cache is padded the same way.
CTX_PAD = 256
# ggml-cuda.cu: ops of at least this many rows run on the GPU even when their weights are in host memory
# (GGML_OP_OFFLOAD_MIN_BATCH, default 32).
OP_OFFLOAD_MIN_BATCH = 32
F32_BYTES = 4
F16_BYTES = 2

# src/llama-model.cpp create_memory: recurrent_type_r / recurrent_type_s = GGML_TYPE_F32.
RECURRENT_STATE_BYTES = 4
# src/llama-arch.cpp llm_arch_is_hybrid (GGUF architecture names from LLM_ARCH_NAMES). The state of Kimi-Linear
# (KDA head sizes) and MiniMax-01 (lightning-attention head size) follows other keys and is not modelled.
HYBRID_ARCHS = frozenset({"jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
                          "nemotron_h_moe", "qwen3next", "qwen35", "qwen35moe"})
UNMODELLED_STATE_ARCHS = frozenset({"kimi-linear", "minimax-01", "bailingmoe3", "kimi-k3", "glm5-next",
                                    "qwen4exp", "deepseek4"})
# src/models/qwen3next.cpp, qwen35.cpp, qwen35moe.cpp: without attention.recurrent_layers, layer i is recurrent
# when (i + 1) % full_attention_interval != 0, the interval defaulting to 4.
INTERVAL_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe"})
DEFAULT_FULL_ATTENTION_INTERVAL = 4

# GPU memory outside llama.cpp's logged buffers (CUDA context, cuBLAS handles and workspace, ggml's CUDA
# pool): the "unaccounted" column of llama.cpp's memory breakdown, 595-598 MiB in every one of our 19
# measurements on an H200 (driver 580.159.04, CUDA 13.0, llama.cpp 0c1e570), whatever the model, context or
# batch size. Other GPUs, drivers and CUDA versions differ by tens to hundreds of MiB.
LLAMACPP_CUDA_RUNTIME_BYTES = 597 * MiB

# Tensors of llama.cpp's input and output layers (src/llama-arch.cpp: LLM_TENSOR_INFOS, LLM_TENSOR_LAYER_INPUT
# and LLM_TENSOR_LAYER_OUTPUT, names from LLM_TENSOR_NAMES). Any other tensor outside ``blk.N`` (rope_freqs,
# token_embd_norm) is created with the first repeating layer.
_INPUT_TENSORS = frozenset(
    {
        "token_embd",
        "position_embd",
        "token_types",
        "per_layer_token_embd",
        "masked_embd_centroids",
        "masked_embd_ordering",
    }
)
_OUTPUT_TENSORS = frozenset(
    {
        "output",
        "output_norm",
        "cls",
        "cls.output",
        "cls.norm",
        "dense_2",
        "dense_3",
        "dec.output_norm",
        "enc.output_norm",
        "altup_proj",
        "altup_unembd_proj",
        "output_res_score",
    }
)
_BLOCK = re.compile(r"^blk\.(\d+)\.")


class LlamaCppSettings(BaseModel):
    """The llama.cpp flags that decide memory, with llama.cpp's own defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    n_gpu_layers: int | None = None
    """``-ngl``: layers on the GPU out of ``block_count + 1`` (the output layer counts as one). None or a
    negative number means all of them."""
    ctx_size: int | None = Field(default=None, ge=0)
    """``-c``: total context over all slots; None or 0 means the model's trained context (common/common.h)."""
    n_batch: int = Field(default=DEFAULT_N_BATCH, ge=1)
    n_ubatch: int = Field(default=DEFAULT_N_UBATCH, ge=1)
    parallel: int | None = Field(default=1, ge=1)
    """``-np``: sequences decoded at once. None means llama-server's auto: 4 slots sharing a unified cache."""
    kv_unified: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: FlashAttn = "auto"
    swa_full: bool = False
    kv_offload: bool = True
    """False is ``--no-kv-offload``: every layer's cache stays in host memory."""
    op_offload: bool = True
    """False is ``--no-op-offload``: host layers compute on the CPU and copy nothing to the GPU."""


class LlamaCppMemory(BaseModel):
    """Bytes llama.cpp allocates on the GPU and in host memory for one model and settings."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    gpu_weights_bytes: int
    host_weights_bytes: int
    gpu_kv_bytes: int
    """KV cells and, for hybrid models, the recurrent state (components: kv_gpu, recurrent_gpu)."""
    host_kv_bytes: int
    gpu_compute_bytes: int
    host_compute_bytes: int
    host_output_bytes: int
    runtime_bytes: int
    gpu_total_bytes: int
    host_total_bytes: int
    n_ctx: int
    """Cells of the KV cache over all streams (the context padded as llama.cpp pads it)."""
    n_ctx_seq: int
    """Context one sequence (one server slot) can use."""
    n_seq: int
    kv_unified: bool
    n_ubatch: int
    flash_attn: bool
    layers_on_gpu: int
    output_on_gpu: bool
    kv_cells_swa: int | None
    components: dict[str, int]
    notes: tuple[str, ...] = ()


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def _layer_of(name: str) -> int | None | Literal["input", "output"]:
    match = _BLOCK.match(name)
    if match:
        return int(match[1])
    stem = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
    if stem in _INPUT_TENSORS:
        return "input"
    if stem in _OUTPUT_TENSORS:
        return "output"
    return None


def _cache_type(name: str, flag: str) -> GgmlType:
    key = name.strip().lower()
    if key not in KV_CACHE_TYPES:
        raise InputError(f"unknown {flag} {name!r}", hint=f"llama.cpp accepts: {', '.join(KV_CACHE_TYPES)}")
    from gpuplan.models.gguf import ggml_type_by_name

    return ggml_type_by_name(key)


def _row_bytes(kind: GgmlType, n: int) -> int:
    """ggml_row_size: bytes of one row of n elements."""
    if n % kind.block_size:
        raise InputError(
            f"a KV row of {n} values cannot be stored as {kind.name.lower()} (blocks of {kind.block_size})",
            hint="use f16 for this model's cache",
        )
    return n // kind.block_size * kind.type_size


def _per_layer(value: object, n: int, default: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n]]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n
    return [default] * n


def estimate_llamacpp(model: GgufModel, settings: LlamaCppSettings | None = None) -> LlamaCppMemory:
    """Bytes of each llama.cpp buffer for ``model`` under ``settings`` on one CUDA GPU."""
    s = settings or LlamaCppSettings()
    spec = model.spec
    notes: list[str] = []
    n_layer = spec.num_hidden_layers  # without MTP layers, which llama.cpp does not load for plain decoding
    place = _Placement.of(s.n_gpu_layers, int(model.hparams.get("block_count", n_layer)))
    weights = _weights(model, place, n_layer, notes)
    context = _context(s, spec.max_position_embeddings, notes)
    type_k, type_v, flash = _attention_kernel(s, notes)
    state = _recurrent_state(model, s, place, context, notes)
    kv = _kv_cache(model, s, place, context, type_k, type_v, flash, notes, state.layers)
    compute = _compute_buffers(model, s, place, weights, context, kv, flash, notes)
    if state.layers:
        notes.append("the compute buffer counts the attention and FFN steps; the state mixers' scan is not "
                     "modelled")

    uses_gpu = weights.gpu > 0 or kv.gpu > 0 or state.gpu > 0 or compute.gpu > 0
    runtime = LLAMACPP_CUDA_RUNTIME_BYTES if uses_gpu else 0
    if context.n_ctx != context.ctx:
        notes.append(
            f"a context of {context.ctx} tokens takes {context.n_ctx} cache cells (padded to multiples of {CTX_PAD})"
        )
    components = {
        "weights_gpu": weights.gpu,
        "weights_host": weights.host,
        "kv_gpu": kv.gpu,
        "kv_host": kv.host,
        "compute_output_step": compute.output_step,
        "compute_attention_step": compute.attention_step,
        "compute_ffn_step": compute.ffn_step,
        "compute_weight_copy": compute.weight_copy,
        "compute_gpu": compute.gpu,
        "compute_host": compute.host,
        "output_host": compute.host_output,
        "runtime": runtime,
    }
    if state.layers:
        components.update(recurrent_gpu=state.gpu, recurrent_host=state.host)
    return LlamaCppMemory(
        gpu_weights_bytes=weights.gpu,
        host_weights_bytes=weights.host,
        gpu_kv_bytes=kv.gpu + state.gpu,
        host_kv_bytes=kv.host + state.host,
        gpu_compute_bytes=compute.gpu,
        host_compute_bytes=compute.host,
        host_output_bytes=compute.host_output,
        runtime_bytes=runtime,
        gpu_total_bytes=weights.gpu + kv.gpu + state.gpu + compute.gpu + runtime,
        host_total_bytes=weights.host + kv.host + state.host + compute.host + compute.host_output,
        n_ctx=context.n_ctx,
        n_ctx_seq=context.n_ctx_seq,
        n_seq=context.n_seq,
        kv_unified=context.unified,
        n_ubatch=context.n_ubatch,
        flash_attn=flash,
        layers_on_gpu=place.layers_on_gpu(n_layer),
        output_on_gpu=place.output_on_gpu,
        kv_cells_swa=kv.cells_swa,
        components=components,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class _Placement:
    """Which of the ``block_count + 1`` layer slots ``-ngl`` puts on the GPU (src/llama-model.cpp, load_tensors);
    slot ``block_count`` is the output layer."""

    n_layer_all: int
    i_gpu_start: int
    act_gpu_layers: int

    @classmethod
    def of(cls, n_gpu_layers: int | None, n_layer_all: int) -> _Placement:
        ngl = n_layer_all + 1 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers
        return cls(n_layer_all, max(n_layer_all + 1 - ngl, 0), min(ngl, n_layer_all + 1))

    def on_gpu(self, il: int) -> bool:
        return not (il < self.i_gpu_start or (il - self.i_gpu_start) >= self.act_gpu_layers)

    @property
    def output_on_gpu(self) -> bool:
        return self.on_gpu(self.n_layer_all)

    def layers_on_gpu(self, n_layer: int) -> int:
        return sum(1 for il in range(n_layer) if self.on_gpu(il))


@dataclass(frozen=True)
class _Weights:
    gpu: int
    host: int
    matrices_per_layer: dict[int, int]
    """Bytes of the matrices of each layer: what a GPU-run matrix product copies from host memory (norms and
    biases are not copied: the measured copies equal the matrices' bytes to the byte)."""
    output_matrices: int


def _weights(model: GgufModel, place: _Placement, n_layer: int, notes: list[str]) -> _Weights:
    gpu_w = host_w = output_w = 0
    layer_w: dict[int, int] = {}
    for t in model.tensors:
        where = _layer_of(t.name)
        if isinstance(where, int) and where >= n_layer:
            continue  # MTP layers: created with TENSOR_SKIP unless speculative decoding loads them
        if where == "input":
            host_w += t.nbytes
            continue
        il = place.n_layer_all if where == "output" else (0 if where is None else where)
        if len(t.dims) >= 2:
            if where == "output":
                output_w += t.nbytes
            else:
                layer_w[il] = layer_w.get(il, 0) + t.nbytes
        if place.on_gpu(il):
            gpu_w += t.nbytes
        else:
            host_w += t.nbytes
    embd = model.tensor("token_embd.weight")
    if model.tensor("output.weight") is None and embd is not None:
        output_w += embd.nbytes
        if place.output_on_gpu:
            gpu_w += embd.nbytes
            notes.append(
                "no output.weight: llama.cpp puts a copy of token_embd on the GPU as the output layer"
            )
    return _Weights(gpu_w, host_w, layer_w, output_w)


@dataclass(frozen=True)
class _Context:
    """The context and how llama.cpp splits it into streams (src/llama-context.cpp)."""

    ctx: int
    """The context asked for (or the trained one)."""
    n_ctx: int
    """Cells over all streams, padded."""
    n_ctx_seq: int
    n_stream: int
    n_seq: int
    unified: bool
    n_ubatch: int


def _context(s: LlamaCppSettings, trained: int | None, notes: list[str]) -> _Context:
    ctx = s.ctx_size or trained
    if not ctx:
        raise InputError("the model states no context length", hint="give the context size (-c / --ctx-size)")
    if trained and ctx > trained:
        notes.append(f"a context of {ctx} tokens is longer than the {trained} the model was trained with")
    n_batch = min(ctx, s.n_batch)
    n_ubatch = min(n_batch, s.n_ubatch)
    n_seq = SERVER_AUTO_PARALLEL if s.parallel is None else s.parallel
    unified = s.kv_unified or s.parallel is None
    n_ctx = _pad(ctx, CTX_PAD)
    if unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq, CTX_PAD)
        if n_ctx // n_seq == 0:
            raise InputError(f"a context of {ctx} tokens cannot be split over {n_seq} sequences")
        n_ctx, n_stream = n_ctx_seq * n_seq, n_seq
    return _Context(ctx, n_ctx, n_ctx_seq, n_stream, n_seq, unified, n_ubatch)


def _attention_kernel(s: LlamaCppSettings, notes: list[str]) -> tuple[GgmlType, GgmlType, bool]:
    """The K and V cache types, and whether flash attention runs."""
    type_k = _cache_type(s.cache_type_k, "--cache-type-k")
    type_v = _cache_type(s.cache_type_v, "--cache-type-v")
    v_quantized = type_v.block_size > 1
    if s.flash_attn == "off" and v_quantized:
        raise InputError(
            "a quantized V cache needs flash attention",
            hint="drop --flash-attn off, or use --cache-type-v f16 (llama.cpp refuses this too)",
        )
    if s.flash_attn == "auto":
        notes.append("flash attention 'auto' counted as enabled, as llama.cpp resolves it on CUDA GPUs")
    return type_k, type_v, s.flash_attn != "off"


@dataclass(frozen=True)
class _KvCache:
    gpu: int
    host: int
    n_k_max: int
    """Widest K row of any layer (elements), which the compute buffers are sized by."""
    n_v_max: int
    cells_swa: int | None
    """Cells per stream of a sliding-window layer, when they are fewer than the context's."""
    n_kv: int
    """Cells the attention of one layer reads at reserve time."""


def _kv_cache(
    model: GgufModel,
    s: LlamaCppSettings,
    place: _Placement,
    context: _Context,
    type_k: GgmlType,
    type_v: GgmlType,
    flash: bool,
    notes: list[str],
    recurrent: tuple[int, ...] = (),
) -> _KvCache:
    """src/llama-kv-cache.cpp and src/llama-kv-cache-iswa.cpp. ``recurrent``: layers whose state is kept
    instead of KV (every one keeps both in Falcon-H1)."""
    spec, hp = model.spec, model.hparams
    head_kv = _per_layer(
        hp.get("attention.head_count_kv", hp.get("attention.head_count")),
        place.n_layer_all,
        spec.num_key_value_heads,
    )
    key_len = int(hp.get("attention.key_length") or spec.head_dim)
    val_len = int(hp.get("attention.value_length") or spec.v_head_dim)
    key_len_swa = int(hp.get("attention.key_length_swa") or key_len)
    val_len_swa = int(hp.get("attention.value_length_swa") or val_len)
    is_mla = bool(hp.get("attention.key_length_mla")) and bool(hp.get("attention.value_length_mla"))
    kv_layers = _kv_layers(model, place.n_layer_all)
    windows = spec.layer_windows
    n_swa = max((w for w in windows if w is not None), default=0)
    cells_swa: int | None = None
    if n_swa and not s.swa_full:
        cells_swa = _pad(
            min(context.n_ctx_seq, n_swa * (context.n_seq if context.unified else 1) + context.n_ubatch), CTX_PAD
        )
    v_trans_width = (
        0
        if flash
        else max(
            (head_kv[il] * (val_len_swa if windows[il] is not None else val_len) for il in kv_layers),
            default=0,
        )
    )

    gpu_kv = host_kv = 0
    n_k_max = n_v_max = 0
    state_only = frozenset(recurrent) if model.architecture != "falcon-h1" else frozenset()
    for il in kv_layers:
        if head_kv[il] == 0 or il in state_only:
            continue  # recurrent or attention-free layer in a hybrid model (filter_attn of create_memory)
        sliding = windows[il] is not None if il < len(windows) else False
        n_k = head_kv[il] * (key_len_swa if sliding else key_len)
        n_v = head_kv[il] * (val_len_swa if sliding else val_len)
        n_k_max, n_v_max = max(n_k_max, n_k), max(n_v_max, n_v)
        cells = (cells_swa if sliding and cells_swa is not None else context.n_ctx_seq) * context.n_stream
        size = _row_bytes(type_k, n_k) * cells
        if not is_mla:
            # Without flash attention V is stored transposed, padded to the widest layer
            # ([TAG_V_CACHE_VARIABLE] in src/llama-kv-cache.cpp).
            size += _row_bytes(type_v, v_trans_width or n_v) * cells
        if s.kv_offload and place.on_gpu(il):
            gpu_kv += size
        else:
            host_kv += size
    if is_mla:
        notes.append("MLA model: llama.cpp caches the compressed K only (the V cache is a view of it)")
    n_kv = context.n_ctx_seq if any(w is None for w in windows) or cells_swa is None else cells_swa
    return _KvCache(gpu_kv, host_kv, n_k_max, n_v_max, cells_swa, n_kv)


def _kv_layers(model: GgufModel, n_layer_all: int) -> range:
    """The layers that have their own KV cache; later ones of some models reuse an earlier layer's."""
    n_layer = model.spec.num_hidden_layers
    shared = model.hparams.get("attention.shared_kv_layers")
    if model.architecture == "gemma3n":
        return range(min(20, n_layer))  # src/models/gemma3n.cpp: n_layer_kv_from_start = 20
    if isinstance(shared, int) and shared > 0:
        return range(min(max(n_layer_all - shared, 0), n_layer))  # src/models/gemma4.cpp
    return range(n_layer)


@dataclass(frozen=True)
class _Recurrent:
    """The r_l / s_l tensors of the recurrent layers (src/llama-memory-recurrent.cpp)."""

    gpu: int
    host: int
    layers: tuple[int, ...]
    rows: int
    row_bytes: int
    """Bytes of one sequence's state in one layer: (n_embd_r + n_embd_s) f32 values."""


def recurrent_layers(model: GgufModel) -> list[bool]:
    """Per repeating layer, whether llama.cpp keeps recurrent state for it (src/models/<arch>.cpp)."""
    arch, hp, spec = model.architecture, model.hparams, model.spec
    n_layer = spec.num_hidden_layers
    if arch not in HYBRID_ARCHS:
        return [False] * n_layer
    if arch == "falcon-h1":
        return [True] * n_layer  # src/models/falcon-h1.cpp: is_recr_impl filled with true
    if arch in INTERVAL_ARCHS:
        given = hp.get("attention.recurrent_layers")
        if isinstance(given, list):
            return [bool(v) for v in given[:n_layer]]
        interval = int(hp.get("full_attention_interval") or DEFAULT_FULL_ATTENTION_INTERVAL)
        return [(i + 1) % interval != 0 for i in range(n_layer)]
    head_kv = _per_layer(hp.get("attention.head_count_kv", hp.get("attention.head_count")), n_layer,
                         spec.num_key_value_heads)
    if arch in ("nemotron_h", "nemotron_h_moe"):
        # src/models/nemotron-h.cpp: recurrent iff n_head_kv(i) == 0 and n_ff(i) == 0 (the MLP layers have
        # neither attention nor state).
        n_ff = _per_layer(hp.get("feed_forward_length"), n_layer, 0)
        return [head_kv[i] == 0 and n_ff[i] == 0 for i in range(n_layer)]
    return [head_kv[i] == 0 for i in range(n_layer)]  # jamba.cpp, granite-hybrid.cpp, lfm2.cpp, plamo2.cpp


def recurrent_row_widths(model: GgufModel) -> tuple[int, int]:
    """(n_embd_r, n_embd_s): values per sequence in r_l and s_l (src/llama-hparams.cpp)."""
    hp = model.hparams
    d_conv, d_inner = int(hp.get("ssm.conv_kernel") or 0), int(hp.get("ssm.inner_size") or 0)
    d_state, n_group = int(hp.get("ssm.state_size") or 0), int(hp.get("ssm.group_count") or 0)
    l_cache = int(hp.get("shortconv.l_cache") or 0)
    if l_cache:
        n_embd_r = model.spec.hidden_size * (l_cache - 1)  # LFM2's short convolution
    else:
        n_embd_r = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    return n_embd_r, d_state * d_inner


def _recurrent_state(model: GgufModel, s: LlamaCppSettings, place: _Placement, context: _Context,
                     notes: list[str]) -> _Recurrent:
    if model.architecture in UNMODELLED_STATE_ARCHS:
        notes.append(f"the recurrent state of '{model.architecture}' layers is not modelled (only their KV cache)")
        return _Recurrent(0, 0, (), 0, 0)
    layers = tuple(il for il, recurrent in enumerate(recurrent_layers(model)) if recurrent)
    if not layers:
        return _Recurrent(0, 0, (), 0, 0)
    n_embd_r, n_embd_s = recurrent_row_widths(model)
    rows = max(1, context.n_seq)  # mem_size = max(1, n_seq_max); n_rs_seq = 0 without speculative decoding
    row_bytes = (n_embd_r + n_embd_s) * RECURRENT_STATE_BYTES
    on_gpu = sum(1 for il in layers if s.kv_offload and place.on_gpu(il))
    gpu, host = on_gpu * rows * row_bytes, (len(layers) - on_gpu) * rows * row_bytes
    notes.append(f"recurrent state: {len(layers)} layer(s) x {rows} sequence(s) x {row_bytes:,} bytes of f32 "
                 f"r_l/s_l = {(gpu + host) / MiB:,.2f} MiB (llama.cpp's RS buffer), fixed whatever the context")
    return _Recurrent(gpu, host, layers, rows, row_bytes)


@dataclass(frozen=True)
class _Compute:
    output_step: int
    attention_step: int
    ffn_step: int
    weight_copy: int
    gpu: int
    host: int
    host_output: int


def _compute_buffers(
    model: GgufModel,
    s: LlamaCppSettings,
    place: _Placement,
    weights: _Weights,
    context: _Context,
    kv: _KvCache,
    flash: bool,
    notes: list[str],
) -> _Compute:
    """src/llama-context.cpp: sched_reserve; measured in tests/test_gguf.py."""
    spec = model.spec
    n_embd, n_head, n_vocab = spec.hidden_size, spec.num_attention_heads, spec.vocab_size
    n_kv, ub = kv.n_kv, context.n_ubatch
    offload_ops = s.op_offload and ub >= OP_OFFLOAD_MIN_BATCH
    # Output step: f32 logits for every token of the ubatch plus the normed hidden states they come from.
    out_step = ub * (n_vocab + n_embd) * F32_BYTES
    if not place.output_on_gpu:
        out_step = out_step + weights.output_matrices if offload_ops else 0
    # Attention step of one layer: residual, norm, q and the f32 scores and mask (no FA) or the f16 mask (FA).
    per_tok = 4 * n_embd + kv.n_k_max + kv.n_v_max
    if flash:
        attn_step = ub * (n_kv * F16_BYTES + per_tok * F32_BYTES)
    else:
        attn_step = ub * F32_BYTES * (n_kv * (n_head + 1) + per_tok)
    moe = spec.moe
    if moe is not None:
        ffn_step = (
            ub
            * F32_BYTES
            * (
                3 * moe.experts_per_token * moe.expert_intermediate_size
                + moe.experts_per_token * n_embd
                + moe.num_experts
                + 2 * n_embd
            )
        )
    else:
        ffn_step = ub * F32_BYTES * (3 * spec.intermediate_size + 2 * n_embd)
    layer_step = max(attn_step, ffn_step)
    host_layers = [il for il in range(spec.num_hidden_layers) if not place.on_gpu(il)]
    weight_copy = (
        max((weights.matrices_per_layer.get(il, 0) for il in host_layers), default=0) if offload_ops else 0
    )
    if place.layers_on_gpu(spec.num_hidden_layers) == 0 and not offload_ops:
        layer_step = 0
    else:
        layer_step += weight_copy
    if weight_copy:
        notes.append(
            f"{len(host_layers)} layer(s) in host memory: their matrix products run on the GPU for"
            " prompt batches, which copies one layer's weights into the compute buffer"
        )
    # Host side (CUDA_Host): the token embeddings gathered on the CPU and the mask (f16 with FA, f32 without).
    host_compute = ub * (2 * n_embd * F32_BYTES + n_kv * (F16_BYTES if flash else F32_BYTES))
    if not flash:
        host_compute += ub * 2 * kv.n_k_max * F32_BYTES
    # Logits kept on the host: one row per sequence at reserve time (src/llama-context.cpp, output_reserve).
    host_output = context.n_seq * n_vocab * F32_BYTES
    return _Compute(out_step, attn_step, ffn_step, weight_copy, max(out_step, layer_step), host_compute, host_output)


# ---- the llama.cpp engine: options and the estimate behind `--engine llama.cpp` ----------------------------

NAME = "llama.cpp"
SUMMARY = "llama.cpp (llama-server, llama-cli) running a GGUF file: its model, KV, compute and output buffers"
SERVING = False


class Options(EngineOptions):
    """llama.cpp's flags that decide memory, named as llama.cpp names them (common/arg.cpp)."""

    n_gpu_layers: int | Literal["all"] | None = Field(
        default=None, description="layers on the GPU, the output layer counting as one; a number or all "
                                  "(default all).", json_schema_extra={"short": "-ngl", "metavar": "N|all"})
    ctx_size: int | None = Field(
        default=None, ge=0, description="context over all sequences; 0 = the model's (default: --batch x "
                                        "--seq, else the model's); a list sweeps.",
        json_schema_extra={"short": "-c", "sweep": True, "metavar": "TOKENS"})
    ubatch_size: int = Field(default=DEFAULT_N_UBATCH, ge=1, description="physical batch, tokens per graph.",
                             json_schema_extra={"short": "-ub"})
    batch_size: int = Field(default=DEFAULT_N_BATCH, ge=1, description="logical batch.")
    parallel: int | Literal["auto"] = Field(
        default=1, description="sequences at once, a number or auto (llama-server's 4 slots sharing a unified "
                               "cache); default: --batch.", json_schema_extra={"short": "-np", "metavar": "N|auto"})
    kv_unified: bool = Field(default=False, description="one KV cache shared by all sequences.")
    cache_type_k: str = Field(default="f16", description="K cache type: " + ", ".join(KV_CACHE_TYPES) + ".",
                              json_schema_extra={"short": "-ctk"})
    cache_type_v: str = Field(default="f16", description="V cache type, as --cache-type-k.",
                              json_schema_extra={"short": "-ctv"})
    flash_attn: FlashAttn = Field(default="auto", description="flash attention: auto, on or off.",
                                  json_schema_extra={"short": "-fa"})
    swa_full: bool = Field(default=False, description="full-size cache for sliding-window layers.")
    kv_offload: bool = Field(default=True, description="keep the KV cache in host memory (--no-kv-offload).",
                             json_schema_extra={"negative": True})
    op_offload: bool = Field(default=True, description="compute host layers on the CPU, with no weight copies "
                                                       "to the GPU (--no-op-offload).",
                             json_schema_extra={"negative": True})

    _tokens = tokens_validator("ctx_size")

    @field_validator("cache_type_k", "cache_type_v", "flash_attn", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return _word(value)

    @field_validator("n_gpu_layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        value = _word(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return "all" if value < 0 else value
        if value != "all":
            hint = " (llama.cpp's --fit, which picks -ngl from free memory, is not modelled)" if value == "auto" else ""
            raise ValueError(f"expects a number or all{hint}")
        return value

    @field_validator("parallel", mode="before")
    @classmethod
    def _slots(cls, value: Any) -> Any:
        value = _word(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError("expects a number or auto")


def _word(value: Any) -> Any:
    """Numbers and words as the CLI passes them: '20' -> 20, 'AUTO' -> 'auto', 'Q8_0' -> 'q8_0'."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    return int(text) if text.lstrip("-").isdigit() else text


def estimate(model: Any, request: PrecisionRequest, workload: Workload, hardware: Hardware,
             options: Options) -> EngineEstimate:
    """llama.cpp's buffers for a GGUF file: ``workload.batch`` slots of ``workload.seq`` tokens each."""
    gguf = _gguf_of(model)
    if request.dtype != "auto":
        raise InputError(f"--dtype {request.dtype}: llama.cpp runs the GGUF file's own types",
                         hint="quantize the file with llama-quantize, or leave --dtype at auto")
    if request.kv_dtype != "auto":
        raise InputError(f"--kv-dtype {request.kv_dtype}: llama.cpp sets its cache types with --cache-type-k/-v",
                         hint="for example -ctk q8_0 -ctv q8_0")
    if hardware.gpus != 1:
        raise InputError("the llama.cpp engine is estimated on one GPU",
                         hint="its split over several GPUs (--tensor-split) is not modelled")
    mem = estimate_llamacpp(gguf, _settings(workload, options))
    return _result(model, gguf, mem, options)


def _gguf_of(model: Any) -> GgufModel:
    """The GgufModel behind a resolved model, re-read from its file when only the path was kept."""
    if getattr(model, "gguf", None) is not None:
        return model.gguf
    location = getattr(model, "location", None)
    if getattr(model, "source", None) == "local" and location and location.lower().endswith(".gguf"):
        from gpuplan.models.gguf import load_gguf_model

        return load_gguf_model(location)
    raise InputError("--engine llama.cpp reads a .gguf file",
                     hint="pass the path of a GGUF model (llama.cpp's convert_hf_to_gguf.py writes one)")


def _settings(workload: Workload, options: Options) -> LlamaCppSettings:
    """The workload in llama.cpp's terms: --batch sequences are --parallel slots, each given --seq tokens."""
    given = options.model_fields_set
    parallel = options.parallel
    if workload.batch > 1 and "parallel" in given and parallel != workload.batch:
        raise InputError(f"batch {workload.batch} and --parallel {parallel} disagree",
                         hint="with llama.cpp the sequences at once are --parallel (-np): give one of them")
    if workload.batch > 1:
        parallel = workload.batch
    if options.ctx_size is not None and workload.seq is not None:
        raise InputError("give --ctx-size or --seq, not both",
                         hint="with llama.cpp --seq is the context of one slot; --ctx-size of all of them")
    ctx = options.ctx_size
    if ctx is None and workload.seq is not None:
        ctx = workload.seq * (parallel if isinstance(parallel, int) else SERVER_AUTO_PARALLEL)
    try:
        return LlamaCppSettings(
            n_gpu_layers=None if options.n_gpu_layers == "all" else options.n_gpu_layers, ctx_size=ctx,
            n_batch=options.batch_size, n_ubatch=options.ubatch_size,
            parallel=None if parallel == "auto" else parallel, kv_unified=options.kv_unified,
            cache_type_k=options.cache_type_k, cache_type_v=options.cache_type_v, flash_attn=options.flash_attn,
            swa_full=options.swa_full, kv_offload=options.kv_offload, op_offload=options.op_offload)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}, got {err['input']!r}") from None


def _result(model: Any, gguf: GgufModel, mem: LlamaCppMemory, options: Options) -> EngineEstimate:
    spec = gguf.spec
    notes = list(mem.notes)
    if mem.host_weights_bytes and (mem.layers_on_gpu < spec.num_hidden_layers or not mem.output_on_gpu):
        notes.append("host weights are read from the memory-mapped file (llama.cpp's default --mmap): they "
                     "use page cache rather than allocated RAM")
    k, v = options.cache_type_k, options.cache_type_v
    run = LlamaCppRun(
        file=gguf.files[0].path, file_type=gguf.file_type,
        n_gpu_layers=None if options.n_gpu_layers == "all" else options.n_gpu_layers,
        layers=spec.num_hidden_layers, layers_on_gpu=mem.layers_on_gpu, output_on_gpu=mem.output_on_gpu,
        n_ctx=mem.n_ctx, n_ctx_seq=mem.n_ctx_seq, n_seq=mem.n_seq, kv_unified=mem.kv_unified,
        n_ubatch=mem.n_ubatch, flash_attn=mem.flash_attn, cache_type_k=k, cache_type_v=v,
        kv_offload=options.kv_offload, kv_cells_swa=mem.kv_cells_swa, host_bytes=mem.host_total_bytes,
        host_weights_bytes=mem.host_weights_bytes, host_kv_bytes=mem.host_kv_bytes,
        host_compute_bytes=mem.host_compute_bytes, host_output_bytes=mem.host_output_bytes)
    return EngineEstimate(
        attn_implementation="flash_attn" if mem.flash_attn else "no_flash_attn",
        # ggml keeps activations in f32 between ops (the compute buffer above is counted so).
        dtype=gguf.file_type or next(iter(gguf.bytes_by_type()), "unknown"), compute_dtype="fp32",
        kv_dtype=k if k == v else f"{k}/{v}", batch=mem.n_seq, seq=mem.n_ctx_seq, prompt_tokens=mem.n_ctx_seq,
        new_tokens=0, weights_bytes=mem.gpu_weights_bytes, kv_cache_bytes=mem.gpu_kv_bytes,
        activation_bytes=mem.gpu_compute_bytes, overhead_bytes=mem.runtime_bytes,
        peak_allocated_bytes=mem.gpu_weights_bytes + mem.gpu_kv_bytes + mem.gpu_compute_bytes,
        total_bytes=mem.gpu_total_bytes, components=dict(mem.components), llamacpp=run, notes=notes)
