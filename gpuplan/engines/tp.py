"""Tensor- and pipeline-parallel sharding of a model's weights and KV heads, as vLLM lays them out.

Every figure is per GPU. Sources (vLLM, vllm-project/vllm, 2025-2026 main):

* ``vllm/model_executor/layers/linear.py`` ``QKVParallelLinear.__init__``: query heads are split
  ``divide(total_num_heads, tp)`` (so tp must divide the head count); KV heads are split
  ``divide(total_num_kv_heads, tp)`` when ``tp < kv_heads``, otherwise every rank holds **one** KV head and
  ``tp / kv_heads`` ranks replicate it (``num_kv_head_replicas = divide(tp, kv_heads)``, so kv_heads must
  divide tp). Column-parallel layers (q/k/v, gate/up, MLA ``q_b_proj``/``kv_b_proj``) split their output
  rows, row-parallel layers (o_proj, down_proj) split their input columns; a row-parallel bias is kept whole
  on every rank. Routers, norms and MLA's ``q_a_proj``/``kv_a_proj_with_mqa`` (``ReplicatedLinear`` in
  ``vllm/model_executor/models/deepseek_v2.py``) are replicated. Fused MoE experts split the intermediate
  dimension (tensor parallel, no expert parallelism by default).
* ``vllm/model_executor/layers/vocab_parallel_embedding.py`` ``VocabParallelEmbedding``: the vocabulary is
  padded to a multiple of ``DEFAULT_VOCAB_PADDING_SIZE = 64`` (``pad_vocab_size``; the padding does not
  grow with tp) and split ``divide(num_embeddings_padded, tp)``; ``ParallelLMHead`` derives from it.
* ``vllm/distributed/utils.py`` ``get_pp_indices``: ``num_layers // pp`` layers per stage; a remainder goes
  one layer each to the middle stages when ``pp > 2`` and it is at most ``pp - 2``, otherwise to the stages
  before the last. The first stage holds the embedding, the last the final norm and lm_head (a tied
  lm_head is materialized again on the last stage when pp > 1).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import tensor_bytes
from gpuplan.engines.memo import per_spec
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec, TensorGroup, TensorRole

VOCAB_PADDING = 64

# Output-row (column-parallel) and input-column (row-parallel) layers by the last component of their name.
_COLUMN = {"gate_proj", "up_proj", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "w1", "w3",
           "q_b_proj", "kv_b_proj"}
_ROW = {"o_proj", "out_proj", "down_proj", "fc2", "c_proj", "dense_4h_to_h", "dense"}
_FUSED_QKV = {"c_attn", "query_key_value", "qkv_proj", "Wqkv"}
_REPLICATED_LINEAR = {"q_a_proj", "kv_a_proj_with_mqa", "eh_proj", "shared_expert_gate"}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def valid_tp_sizes(spec: ModelSpec, limit: int = 64) -> list[int]:
    """Tensor-parallel degrees vLLM accepts for this model, up to ``limit``."""
    return [tp for tp in range(1, limit + 1) if _tp_problem(spec, tp) is None]


def _tp_problem(spec: ModelSpec, tp: int) -> str | None:
    heads, kv = spec.num_attention_heads, spec.num_key_value_heads
    if heads % tp:
        return f"{heads} attention heads are not divisible by tensor parallel size {tp}"
    if spec.mla is None and kv % tp and tp % kv:
        return (f"{kv} KV heads and tensor parallel size {tp}: one must divide the other "
                "(vLLM splits KV heads across ranks or replicates them)")
    if _ceil_div(spec.vocab_size, VOCAB_PADDING) * VOCAB_PADDING % tp:
        return f"the padded vocabulary is not divisible by tensor parallel size {tp}"
    # ColumnParallelLinear / FusedMoE: divide(intermediate_size, tp) (vllm/model_executor/layers/linear.py,
    # fused_moe/layer.py).
    if (spec.moe is None or spec.moe.num_dense_layers) and spec.intermediate_size % tp:
        return f"the MLP width {spec.intermediate_size} is not divisible by tensor parallel size {tp}"
    if spec.moe is not None and spec.moe.expert_intermediate_size % tp:
        return (f"the expert MLP width {spec.moe.expert_intermediate_size} is not divisible by tensor "
                f"parallel size {tp}")
    return None


def validate_parallel(spec: ModelSpec, tp: int, pp: int = 1) -> None:
    """Raise InputError unless vLLM can shard ``spec`` over tp x pp GPUs."""
    if tp < 1 or pp < 1:
        raise InputError(f"parallel sizes must be at least 1 (got tp={tp}, pp={pp})")
    problem = _tp_problem(spec, tp)
    if problem is not None:
        valid = ", ".join(str(t) for t in valid_tp_sizes(spec))
        raise InputError(f"tensor parallel size {tp} does not fit this model: {problem}",
                         hint=f"valid tensor parallel sizes: {valid}")
    if pp > spec.num_hidden_layers:
        raise InputError(f"pipeline parallel size {pp} exceeds the model's {spec.num_hidden_layers} layers",
                         hint=f"use at most {spec.num_hidden_layers} pipeline stages")


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads each rank caches: kv/tp, at least one (replicated when tp > kv heads).

    MLA caches one latent per token whatever tp is."""
    if spec.mla is not None:
        return 1
    return max(1, spec.num_key_value_heads // tp)


def padded_vocab(vocab_size: int) -> int:
    return _ceil_div(vocab_size, VOCAB_PADDING) * VOCAB_PADDING


def pp_layer_split(num_layers: int, pp: int) -> tuple[int, ...]:
    """Decoder layers per pipeline stage (vllm/distributed/utils.py get_pp_indices)."""
    base = [num_layers // pp] * pp
    rest = num_layers % pp
    if rest:
        if pp > 2 and rest <= pp - 2:
            for i in range(1, rest + 1):
                base[i] += 1
        else:
            for i in range(2, rest + 2):
                base[-i] += 1
    return tuple(base)


class ParallelLayout(BaseModel):
    """Per-rank view of a model under tp x pp."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    tp: int
    pp: int
    stage_layers: tuple[int, ...]
    largest_stage: int
    """Index of the pipeline stage whose weights are largest."""
    kv_heads_per_rank: int
    heads_per_rank: int
    padded_vocab: int
    stage_weights_bytes: tuple[int, ...]

    @property
    def weights_bytes(self) -> int:
        """Weights of the most loaded GPU."""
        return self.stage_weights_bytes[self.largest_stage]

    @property
    def layers_on_largest_stage(self) -> int:
        return self.stage_layers[self.largest_stage]


def _last(name: str) -> str:
    parts = [p for p in name.split(".") if p not in ("weight", "bias")]
    return parts[-1] if parts else name


def _shard_dim(shape: tuple[int, ...], dim: int, size: int) -> tuple[int, ...]:
    out = list(shape)
    out[dim] = size
    return tuple(out)


def _shard_tensor(t: TensorGroup, spec: ModelSpec, tp: int) -> TensorGroup:
    """The slice of ``t`` one tensor-parallel rank holds."""
    if tp == 1:
        return t
    name, shape, role = t.name, t.shape, t.role
    last = _last(name)
    is_bias = name.endswith(".bias") or last.endswith("_bias")
    if role in (TensorRole.EMBEDDING, TensorRole.LM_HEAD):
        return t.model_copy(update={"shape": _shard_dim(shape, 0, padded_vocab(shape[0]) // tp)})
    if role in (TensorRole.NORM, TensorRole.ROUTER, TensorRole.POSITION_EMBEDDING):
        return t
    if last == "sinks":
        return t.model_copy(update={"shape": (_ceil_div(shape[0], tp),)})
    kv_r = kv_heads_per_rank(spec, tp)
    if last in ("k_proj", "v_proj"):
        width = spec.head_dim if last == "k_proj" else spec.v_head_dim
        return t.model_copy(update={"shape": _shard_dim(shape, 0, kv_r * width)})
    if last == "q_proj":
        return t.model_copy(update={"shape": _shard_dim(shape, 0, shape[0] // tp)})
    if last in _FUSED_QKV:
        q = spec.num_attention_heads // tp * spec.head_dim
        rows = q + kv_r * (spec.head_dim + spec.v_head_dim)
        return t.model_copy(update={"shape": _shard_dim(shape, 0, rows)})
    if last in _REPLICATED_LINEAR:
        return t
    if last.startswith("gate_up_proj"):
        # Fused experts (E, 2I, h) and their bias (E, 2I): split the intermediate rows.
        dim = -1 if is_bias else (-2 if len(shape) >= 2 else -1)
        return t.model_copy(update={"shape": _shard_dim(shape, dim, _ceil_div(shape[dim], tp))})
    if last.startswith("down_proj") and is_bias:
        return t
    # Qwen-1 names its gate and up projections w2 and w1 (both merged column parallel); elsewhere w2 is
    # the down projection.
    column = last in _COLUMN or (last == "w2" and spec.model_type == "qwen")
    row = last in _ROW or (last == "w2" and spec.model_type != "qwen")
    if column:
        dim = -1 if is_bias or len(shape) == 1 else -2
        return t.model_copy(update={"shape": _shard_dim(shape, dim, _ceil_div(shape[dim], tp))})
    if row:
        if is_bias or len(shape) == 1:
            return t
        return t.model_copy(update={"shape": _shard_dim(shape, -1, _ceil_div(shape[-1], tp))})
    if role in (TensorRole.LINEAR, TensorRole.EXPERT_LINEAR) and len(shape) >= 2:
        # An unnamed linear: assume column parallel, the common case in vLLM model files.
        return t.model_copy(update={"shape": _shard_dim(shape, -2, _ceil_div(shape[-2], tp))})
    return t


def layer_share(t: TensorGroup, spec: ModelSpec, layers: range) -> int:
    """How many copies of a per-layer tensor group fall on the decoder layers ``layers``."""
    first_moe, dense = _block_bounds(spec)
    return _share(t, spec, len(layers), sum(1 for i in layers if i >= first_moe),
                  sum(1 for i in layers if i < dense))


def _block_bounds(spec: ModelSpec) -> tuple[int, int]:
    """(index of the first MoE block, number of dense blocks before it): MoE blocks follow the dense ones
    (DeepSeek's first_k_dense_replace); a dense model has no MoE block."""
    moe = spec.moe
    if moe is None:
        return spec.num_hidden_layers, 0
    return spec.num_hidden_layers - moe.num_moe_layers, moe.num_dense_layers


def _share(t: TensorGroup, spec: ModelSpec, layers: int, moe_layers: int, dense_layers: int) -> int:
    """layer_share for a run of ``layers`` decoder layers, ``moe_layers`` of them MoE blocks and
    ``dense_layers`` dense blocks before the first MoE one."""
    total = spec.num_hidden_layers
    moe = spec.moe
    if t.count % total == 0:
        return t.count // total * layers
    if moe is not None and moe.num_moe_layers and t.count % moe.num_moe_layers == 0:
        return t.count // moe.num_moe_layers * moe_layers
    if moe is not None and moe.num_dense_layers and t.count % moe.num_dense_layers == 0:
        return t.count // moe.num_dense_layers * dense_layers
    return round(t.count * layers / total)


def stage_spec(spec: ModelSpec, tp: int, pp: int, stage: int) -> ModelSpec:
    """The tensors one GPU of pipeline stage ``stage`` holds, with tensor-parallel shapes."""
    split = pp_layer_split(spec.num_hidden_layers, pp)
    start = sum(split[:stage])
    layers = range(start, start + split[stage])
    first, last = stage == 0, stage == pp - 1
    tensors: list[TensorGroup] = []
    has_lm_head = any(t.role is TensorRole.LM_HEAD and t.loaded for t in spec.tensors)
    for t in spec.tensors:
        if not t.loaded:
            continue
        if t.name.startswith(("layers.", "h.")):
            count = layer_share(t, spec, layers)
            if count == 0:
                continue
            t = t.model_copy(update={"count": count})
        elif t.name == "vision_tower":
            # A multimodal checkpoint's vision tower loads on the first stage, sharded like the text layers.
            if first:
                tensors.append(t.model_copy(update={"shape": (_ceil_div(t.shape[0], tp),)}))
            continue
        elif t.role in (TensorRole.EMBEDDING, TensorRole.POSITION_EMBEDDING):
            if not first:
                if last and t.role is TensorRole.EMBEDDING and not has_lm_head and pp > 1:
                    # A tied lm_head is a separate ParallelLMHead on the last stage.
                    tensors.append(_shard_tensor(t.model_copy(update={"name": "lm_head.weight",
                                                                      "role": TensorRole.LM_HEAD}), spec, tp))
                continue
        elif not last:
            continue  # final norm and lm_head live on the last stage
        tensors.append(_shard_tensor(t, spec, tp))
    return spec.model_copy(update={"tensors": tuple(tensors), "num_hidden_layers": max(1, len(layers))})


def parallel_layout(spec: ModelSpec, precision: Precision, tp: int = 1, pp: int = 1) -> ParallelLayout:
    """The per-rank view of ``spec`` under tp x pp (pure; a plan asks for the same layout once per GPU type, so
    it is memoized)."""
    return _parallel_layout(spec, precision, tp, pp)


@per_spec
def _rank_tensor_bytes(spec: ModelSpec, precision: Precision, tp: int, staged: bool
                       ) -> tuple[int, int, tuple[tuple[int, TensorGroup], ...]]:
    """On one tensor-parallel rank: (bytes the first pipeline stage holds besides its layers, bytes the last one
    holds besides its layers, (bytes of one copy, group) of each per-layer tensor group). ``staged``: more than
    one pipeline stage, where a tied lm_head is materialized again on the last. The same for every pipeline
    size, so a plan shards each tensor once per tensor-parallel size."""
    has_lm_head = any(t.role is TensorRole.LM_HEAD and t.loaded for t in spec.tensors)
    first = last = 0
    layer_tensors: list[tuple[int, TensorGroup]] = []
    for t in spec.tensors:
        if not t.loaded:
            continue
        if t.name.startswith(("layers.", "h.")):
            layer_tensors.append((tensor_bytes(_shard_tensor(t.model_copy(update={"count": 1}), spec, tp),
                                               precision), t))
        elif t.name == "vision_tower":
            first += tensor_bytes(t.model_copy(update={"shape": (_ceil_div(t.shape[0], tp),)}), precision)
        elif t.role in (TensorRole.EMBEDDING, TensorRole.POSITION_EMBEDDING):
            first += tensor_bytes(_shard_tensor(t, spec, tp), precision)
            if staged and t.role is TensorRole.EMBEDDING and not has_lm_head:
                tied = t.model_copy(update={"name": "lm_head.weight", "role": TensorRole.LM_HEAD})
                last += tensor_bytes(_shard_tensor(tied, spec, tp), precision)
        else:
            last += tensor_bytes(_shard_tensor(t, spec, tp), precision)
    return first, last, tuple(layer_tensors)


def stage_weights_bytes(spec: ModelSpec, precision: Precision, tp: int, pp: int) -> list[int]:
    """Weight bytes of one GPU of each pipeline stage: what ``weights_bytes(stage_spec(...))`` gives for
    every stage, with each tensor sharded once rather than once per stage (a tensor's bytes are its copies
    times the bytes of one, so a stage's share is a multiplication)."""
    split = pp_layer_split(spec.num_hidden_layers, pp)
    first_extra, last_extra, layer_tensors = _rank_tensor_bytes(spec, precision, tp, pp > 1)
    # A stage's layer tensors depend only on how many layers it has and how many of them are MoE or dense
    # blocks, so stages alike in that are summed once (and once per plan: _layers_bytes is memoized). Stage
    # [start, end) holds the MoE blocks from first_moe on and the dense blocks before `dense`.
    first_moe, dense = _block_bounds(spec)
    kinds = []
    start = 0
    for layers in split:
        end = start + layers
        kinds.append((layers, max(0, end - max(start, first_moe)), max(0, min(end, dense) - start)))
        start = end
    kind_bytes = {kind: _layers_bytes(spec, precision, tp, kind) for kind in set(kinds)}
    per_stage = [kind_bytes[kind] for kind in kinds]
    per_stage[0] += first_extra
    per_stage[-1] += last_extra
    return per_stage


@per_spec
def _layers_bytes(spec: ModelSpec, precision: Precision, tp: int, kind: tuple[int, int, int]) -> int:
    """Bytes of the per-layer tensors on one rank of a stage of ``kind`` (layers, MoE blocks, dense blocks)."""
    _, _, layer_tensors = _rank_tensor_bytes(spec, precision, tp, False)
    return sum(one * _share(t, spec, *kind) for one, t in layer_tensors)


@per_spec
def _parallel_layout(spec: ModelSpec, precision: Precision, tp: int, pp: int) -> ParallelLayout:
    validate_parallel(spec, tp, pp)
    split = pp_layer_split(spec.num_hidden_layers, pp)
    stage_bytes = stage_weights_bytes(spec, precision, tp, pp)
    largest = max(range(pp), key=lambda i: stage_bytes[i])
    return ParallelLayout(
        tp=tp, pp=pp, stage_layers=split, largest_stage=largest,
        kv_heads_per_rank=kv_heads_per_rank(spec, tp),
        heads_per_rank=spec.num_attention_heads // tp,
        padded_vocab=padded_vocab(spec.vocab_size),
        stage_weights_bytes=tuple(stage_bytes),
    )


def weights_per_gpu(spec: ModelSpec, precision: Precision, tp: int = 1, pp: int = 1) -> int:
    """Weight bytes on the most loaded GPU under tp x pp."""
    return parallel_layout(spec, precision, tp, pp).weights_bytes


__all__ = [
    "ParallelLayout", "kv_heads_per_rank", "padded_vocab", "parallel_layout", "pp_layer_split",
    "stage_spec", "stage_weights_bytes", "valid_tp_sizes", "validate_parallel", "weights_per_gpu",
]
