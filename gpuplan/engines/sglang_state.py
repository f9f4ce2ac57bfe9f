"""SGLang's pools for models with Mamba / gated-delta-net / linear-attention layers (SGLang 0.5.23).

A model SGLang treats as "mambaish" (``configs/hybrid_arch.py`` ``mambaish_config``: Qwen3-Next, Qwen3.5,
Nemotron-H, Falcon-H1, GraniteMoeHybrid, LFM2, Kimi-Linear ...) gets two pools out of the ``rest_memory`` that
``mem_fraction_static`` leaves (the rule of gpuplan.engines.sglang): a state pool of request slots (``MambaPool``)
and the token pool of its full-attention layers. Sources, the sglang 0.5.23 wheel (``pip download
sglang==0.5.23 --no-deps``), files under ``sglang/srt/``:

* ``mem_cache/kv_cache_configurator.py`` ``_handle_max_mamba_cache``: without ``--max-mamba-cache-size`` the
  state pool takes ``rest x ratio / (1 + ratio)`` (``ratio`` = ``--mamba-full-memory-ratio``, default 0.9:
  ``arg_groups/fields/schedule.py``, ``fallback=0.9``) and holds ``max_mamba_cache_size = int((budget -
  per_req) // per_req)`` slots; the pool is charged ``(max_mamba_cache_size + 1) x per_req`` (one padding
  slot) and the full-attention KV pool gets the rest. Under pipeline parallelism ``per_req`` is scaled to the
  largest per-stage share of the state layers.
* ``configs/mamba_utils.py`` ``BaseLinearStateParams.mamba_cache_per_req``: ``(conv elements x conv dtype
  size + temporal elements x ssm dtype size) x state layers``; ``Mamba2StateShape.create``: conv state
  ``(conv_dim / tp, conv_kernel - 1)``, temporal state ``(heads / tp, head_dim, state_size)``. The conv dtype is
  ``SGLANG_MAMBA_CONV_DTYPE`` (``environ.py``: ``bfloat16``) whatever the model dtype; the temporal dtype is
  ``--mamba-ssm-dtype``, else the config's ``mamba_ssm_dtype``, else ``float32`` (``mamba2_state_dtype``).
* ``model_executor/pool_configurator.py`` ``DefaultPoolConfigurator``: the KV cell size counts only
  ``full_attention_layer_ids`` (every layer for Falcon-H1, whose layers run attention and Mamba side by side).
* ``kv_cache_configurator.py`` ``resolve_max_num_reqs``: ``max_running_requests = min(clamp(int(tokens /
  context_len x 512), 2048, 4096), tokens // 2, max_mamba_cache_size // mamba_ratio)``; ``mamba_ratio`` is 3
  (``MAMBA_CACHE_SIZE_MAX_RUNNING_REQUESTS_RATIO``) plus 2 tracking slots when the radix cache keeps its extra
  state buffer (``allocation_sizing.py`` ``get_mamba_tracking_slots(extra_buffer=True, overlap=True)``), which
  ``arg_groups/overrides.py`` ``_mamba_radix_cache_resolution`` picks for the architectures of
  ``_MAMBA_EXTRA_BUFFER_ARCHS`` with the overlap scheduler on (the default) and the triton linear-attention
  backend (the default, ``arg_groups/fields/exec_.py``).

Not modelled: speculative decoding (its intermediate state per draft token), ``--disable-radix-cache``
(ratio 1), ``--enable-unified-memory`` and the ReplaySSM ring.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpuplan.models.spec import LayerCache, ModelSpec

STATE_RULES_RELEASE = "0.5.23"
"""The SGLang release whose hybrid pool rules were read."""
SsmDtype = Literal["float32", "bfloat16", "float16"]
SSM_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# environ.py (0.5.23): SGLANG_MAMBA_CONV_DTYPE = EnvStr("bfloat16"), read by configs/mamba_utils.py.
CONV_STATE_BYTES = 2
# arg_groups/fields/schedule.py (0.5.23): mamba_full_memory_ratio ... fallback=0.9.
DEFAULT_MAMBA_FULL_MEMORY_RATIO = 0.9
# mem_cache/kv_cache_configurator.py (0.5.23): MAMBA_CACHE_SIZE_MAX_RUNNING_REQUESTS_RATIO = 3.
MAMBA_SLOTS_PER_REQUEST = 3
# mem_cache/allocation_sizing.py (0.5.23): get_mamba_tracking_slots returns 2 with the extra buffer and the
# overlap scheduler.
EXTRA_BUFFER_TRACKING_SLOTS = 2
# kv_cache_configurator.py resolve_max_num_reqs (0.5.23): int(tokens / context_len * 512), clamped to
# [2048, 4096].
REQS_PER_CONTEXT = 512
MIN_ESTIMATED_REQS = 2048
MAX_ESTIMATED_REQS = 4096
# arg_groups/overrides.py _MAMBA_EXTRA_BUFFER_ARCHS (0.5.23), as the config model_types of those architectures
# (GraniteMoeHybrid only with Mamba layers, which is what makes it a state model here).
EXTRA_BUFFER_MODEL_TYPES = frozenset({"qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text",
                                      "falcon_h1", "nemotron_h", "granitemoehybrid", "kimi_linear"})
# The hybrid model_types SGLang 0.5.23 implements (sglang/srt/models/): others are sized by the same rule
# but SGLang would not load them.
SGLANG_STATE_MODEL_TYPES = EXTRA_BUFFER_MODEL_TYPES | {"lfm2", "lfm2_moe", "mamba", "mamba2", "falcon_mamba"}


class StatePool(BaseModel):
    """SGLang's state pool on the most constrained GPU. Sizes in bytes."""

    model_config = ConfigDict(frozen=True)

    ssm_dtype: str
    per_request: int
    """Bytes of one request slot on this GPU: every state layer's conv and temporal state."""
    slots: int
    """max_mamba_cache_size: request slots of state (the pool allocates one more for padding)."""
    pool_bytes: int
    slots_per_request: int
    """mamba_ratio: state slots one running request may hold (radix cache)."""


def is_state_layer(lc: LayerCache) -> bool:
    return lc.kind in ("state", "hybrid")


def is_attention_layer(lc: LayerCache) -> bool:
    return lc.kind in ("attention", "hybrid")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def layer_state_bytes(lc: LayerCache, tp: int, ssm_bytes: int) -> int:
    """One state layer of one request on one TP rank: conv (conv_dim / tp, kernel - 1) in bf16, temporal
    state / tp in the ssm dtype (configs/mamba_utils.py Mamba2StateShape.create)."""
    channels = lc.conv_elems // lc.conv_kernel if lc.conv_kernel else 0
    conv = _cdiv(channels, tp) * max(0, lc.conv_kernel - 1)
    return conv * CONV_STATE_BYTES + _cdiv(lc.recurrent_elems, tp) * ssm_bytes


def ssm_dtype_of(spec: ModelSpec, given: str | None) -> str:
    """--mamba-ssm-dtype, else the config's mamba_ssm_dtype, else float32 (configs/mamba_utils.py)."""
    if given:
        return given
    config = dict(spec.state_dtypes).get("mamba_ssm_dtype")
    return config if config in SSM_DTYPE_BYTES else "float32"


def state_per_request(spec: ModelSpec, tp: int, ssm_bytes: int, stage_ranges: list[tuple[int, int]]) -> int:
    """``mamba_cache_per_req`` scaled to the largest per-stage share of the state layers
    (kv_cache_configurator.py _handle_max_mamba_cache)."""
    layers = [i for i, lc in enumerate(spec.layer_caches) if is_state_layer(lc)]
    if not layers:
        return 0
    per_layer = max(layer_state_bytes(spec.layer_caches[i], tp, ssm_bytes) for i in layers)
    per_req = per_layer * len(layers)
    if len(stage_ranges) == 1:
        return per_req
    stage_max = max(sum(1 for i in layers if start <= i < end) for start, end in stage_ranges)
    return int(per_req * (stage_max / len(layers)))


def slots_per_request(spec: ModelSpec) -> int:
    """mamba_ratio with the radix cache on and the overlap scheduler at its default."""
    extra = EXTRA_BUFFER_TRACKING_SLOTS if spec.model_type in EXTRA_BUFFER_MODEL_TYPES else 0
    return MAMBA_SLOTS_PER_REQUEST + extra


def state_pool(spec: ModelSpec, rest_memory: int, per_request: int, *, ssm_dtype: str,
               full_memory_ratio: float | None, max_cache_size: int | None) -> StatePool:
    """The state pool out of ``rest_memory`` bytes (_handle_max_mamba_cache, no speculative decoding)."""
    ratio = DEFAULT_MAMBA_FULL_MEMORY_RATIO if full_memory_ratio is None else full_memory_ratio
    if max_cache_size is not None:
        slots = max_cache_size
    else:
        budget = rest_memory * ratio / (1 + ratio)
        slots = int((budget - per_request) // per_request) if per_request else 0
    return StatePool(ssm_dtype=ssm_dtype, per_request=per_request, slots=slots,
                     pool_bytes=max(0, slots + 1) * per_request, slots_per_request=slots_per_request(spec))


def max_running_requests(tokens: int, context_len: int, pool: StatePool) -> int:
    """resolve_max_num_reqs without --max-running-requests."""
    estimated = max(min(int(tokens / context_len * REQS_PER_CONTEXT), MAX_ESTIMATED_REQS), MIN_ESTIMATED_REQS)
    return max(0, min(estimated, tokens // 2, pool.slots // pool.slots_per_request))


def attention_cell_bytes(spec: ModelSpec, kv_heads_per_rank: int, start: int, end: int, kv_bytes: int) -> int:
    """Bytes one token takes in the KV pool of the full-attention layers in [start, end)."""
    width = spec.mla.latent_dim if spec.mla is not None else None
    return sum(width or kv_heads_per_rank * (lc.key_dim + lc.value_dim) for lc in spec.layer_caches[start:end]
               if is_attention_layer(lc)) * kv_bytes
