"""What a serving engine's weights cost on the card: the caching allocator's blocks and segments, not the
tensors' bytes.

vLLM measures its weights as the allocated bytes the load added: ``DeviceMemoryProfiler`` around
``load_model`` reads ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` (vllm 0.19.0
``utils/mem_utils.py`` and ``platforms/cuda.py get_current_memory_usage``; the same in 0.10.1.1 and 0.24.0),
and the budgets of 0.6.4 and later charge that figure (or the allocated peak, which contains it). The caching
allocator counts a block's size there, not the request's: a request above 1 MiB that opens a new segment gets
the segment rounded up to 2 MiB (20 MiB below 10 MiB), and the rest is split off only when it is more than
1 MiB (c10/cuda/CUDACachingAllocator.cpp ``get_allocation_size``, ``should_split``). A 31.5 MiB weight
therefore allocates 32 MiB. Qwen2.5-7B's fused QKV (4,608 x 3,584), o_proj (24.5 MiB) and down_proj
(129.5 MiB) leave such rests in each of its 28 layers; replayed, the load allocates 57.0 MiB beyond its
tensors at TP=1, 21.5 at TP=2 and 0.3 at TP=4, where vLLM printed 57.1 (14.2488 GiB, 0.10.1.1), 15-26 and
under 1 (14.25, 7.12 and 3.55 GiB, 0.19.0; tests/fixtures/serving_logs.yaml). Llama-3.1-8B's and
Qwen3-8B's tensors are multiples of 2 MiB: nothing beyond their bytes, as logged.

SGLang reads its weights from free memory (``Load weight begin/end``: ``get_available_gpu_memory`` before and
after ``load_model``, model_runner.py), which drops by the segments the load reserves: the reserved bytes
below. QwQ-32B (Qwen2.5-32B's layout) at TP=4 reserves 15.51 GiB for its 15.26 GiB of tensors; SGLang 0.4.3.post4
printed "mem usage=15.54 GB" on an L4. vLLM's releases before 0.6.4 charge what the process reserved
(0.2.5-0.3.0: total - free; 0.3.1-0.6.3: free at init - free after profiling), which holds these blocks and
the rests split off them; a rest is free and may serve the profile run, so the blocks are what is charged there
too.

The order is vLLM's module construction under ``torch.device("cuda")``: the embedding, then each decoder
layer's parameters as the spec lists them, with the projections vLLM fuses as one tensor (q/k/v in
``QKVParallelLinear``, gate/up in ``MergedColumnParallelLinear``, every expert's gate/up and down in
``FusedMoE``'s ``w13_weight`` and ``w2_weight``), the rotary cache built inside the first layer's attention
(``rotary_embedding/base.py _compute_cos_sin_cache``: float32 ``freqs``, ``cos``, ``sin`` and their
``cat``, then the copy in the model dtype), then the final norm and the LM head. A quantized linear's packed
weight and scales are one allocation here. Only the large pool's rounding matters: parameters up to 1 MiB
(norms, biases, scales) round to 512 bytes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import NamedTuple

from gpuplan.calc.allocator import MIN_BLOCK_SIZE, SMALL_SIZE, CachingAllocator, allocation_size, round_size
from gpuplan.calc.precision import DTYPE_BYTES, Precision
from gpuplan.calc.weights import tensor_bytes
from gpuplan.engines.memo import per_spec
from gpuplan.engines.tp import _block_bounds, _shard_tensor, _share, pp_layer_split
from gpuplan.models.spec import ModelSpec, TensorGroup, TensorRole

# The projections vLLM builds as one parameter, by the last part of their names (llama.py, qwen2.py,
# mixtral.py, qwen2_moe.py: QKVParallelLinear, MergedColumnParallelLinear, FusedMoE).
_FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up",
          "w1": "gate_up", "w3": "gate_up"}


class WeightBlocks(NamedTuple):
    """One GPU of one pipeline stage: what loading its weights allocates (vLLM's figure) and the segments it
    reserves (what free memory loses: SGLang's figure, and vLLM's before 0.6.4)."""

    allocated: int
    reserved: int


class _Pools(NamedTuple):
    large: list[int]  # sizes of the free blocks, sorted
    small: list[int]


def _fuse_key(t: TensorGroup) -> str | None:
    parts = t.name.split(".")
    last = parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]
    fused = _FUSED.get(last)
    if fused is None:
        return None
    parent = ".".join(parts[:-2])
    suffix = parts[-1] if parts[-1] in ("weight", "bias") else ""
    return f"{parent}.{fused}.{suffix}"


class _LayerGroup(NamedTuple):
    """A per-layer tensor group on one rank: the bytes of one copy, the parameter vLLM fuses it into (None:
    its own), whether its copies are one FusedMoE parameter, whether it belongs to the attention."""

    one: int
    key: str | None
    experts: bool
    attention: bool


@per_spec
def _layer_groups(spec: ModelSpec, precision: Precision, tp: int) -> tuple[_LayerGroup, ...]:
    groups = []
    for t in spec.tensors:
        if not t.loaded or not t.name.startswith(("layers.", "h.")):
            continue
        one = tensor_bytes(_shard_tensor(t.model_copy(update={"count": 1}), spec, tp), precision)
        experts = t.role is TensorRole.EXPERT_LINEAR
        key = _fuse_key(t) or (t.name if experts else None)
        groups.append(_LayerGroup(one, key, experts, "attn" in t.name or "attention" in t.name))
    return tuple(groups)


@per_spec
def _stage_copies(spec: ModelSpec, start: int, stop: int) -> tuple[int, ...]:
    """How many copies of each per-layer group layers [start, stop) hold (``layer_share``, as their weight
    bytes count them)."""
    first_moe, dense = _block_bounds(spec)
    moe_layers, dense_layers = max(0, stop - max(start, first_moe)), max(0, min(stop, dense) - start)
    return tuple(_share(t, spec, stop - start, moe_layers, dense_layers) for t in spec.tensors
                 if t.loaded and t.name.startswith(("layers.", "h.")))


def _layer_allocations(groups: tuple[_LayerGroup, ...], counts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """One layer's allocations, holding ``counts`` copies of each group: (the attention's, the rest), in order
    (the rotary cache is built between the two)."""
    sizes: list[int] = []
    keys: list[str | None] = []
    attention = 0
    for group, count in zip(groups, counts, strict=True):
        if count == 0:
            continue
        # FusedMoE holds every local expert in one parameter (w13: gate and up, w2: down).
        parts = [group.one * count] if group.experts else [group.one] * count
        for one in parts:
            if group.key is not None and group.key in keys:  # a layer has each fused parameter once
                sizes[keys.index(group.key)] += one
            else:
                sizes.append(one)
                keys.append(group.key)
        if group.attention:
            attention = len(sizes)
    return tuple(sizes[:attention]), tuple(sizes[attention:])


def _spread(copies: tuple[int, ...], layers: int) -> list[tuple[int, ...]]:
    """Each layer's share of the stage's copies, spread evenly: the spec records how many layers hold a group,
    not which (hybrid models interleave their layer types), so a stage's totals are kept exactly."""
    return [tuple((j + 1) * c // layers - j * c // layers for c in copies) for j in range(layers)]


def _rope_cache(allocator: CachingAllocator, spec: ModelSpec, e: int) -> None:
    """vLLM's RotaryEmbedding cache as it is built: float32 freqs [P, r/2], cos, sin, cat [P, r], then the
    copy in the model dtype; the float32 tensors are freed."""
    if any(t.role is TensorRole.POSITION_EMBEDDING for t in spec.tensors) or not spec.max_position_embeddings:
        return
    rotary = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_dim
    half = spec.max_position_embeddings * (rotary // 2) * DTYPE_BYTES["fp32"]
    freqs, cos, sin = (allocator.malloc(half) for _ in range(3))
    cat = allocator.malloc(2 * half)
    for addr in (freqs, cos, sin):
        allocator.free(addr)
    allocator.malloc(spec.max_position_embeddings * rotary * e)
    allocator.free(cat)


def _allocate(pools: _Pools, size: int) -> tuple[int, int]:
    """One request of a load that frees nothing: (the bytes its block counts as allocated, the bytes of a new
    segment, if it opened one). ``pools`` hold the sizes of the free blocks, sorted. With no free to come no
    block coalesces again and blocks of one size are interchangeable, so sizes alone decide the counts (best
    fit: the smallest free block that holds the request, a new segment otherwise; a rest is split off above
    1 MiB in the large pool, from 512 bytes in the small one)."""
    size = round_size(size)
    small = size <= SMALL_SIZE
    free = pools.small if small else pools.large
    index = bisect_left(free, size)
    segment = 0
    if index < len(free):
        block = free.pop(index)
    else:
        block = segment = allocation_size(size)
    rest = block - size
    if (rest >= MIN_BLOCK_SIZE) if small else (rest > SMALL_SIZE):
        insort(free, rest)
        return size, segment
    return block, segment


@per_spec
def _stage_blocks(spec: ModelSpec, precision: Precision, tp: int, first: bool, last: bool, staged: bool,
                  copies: tuple[int, ...], layers: int) -> WeightBlocks:
    """Loading a stage of ``layers`` decoder layers holding ``copies`` of each per-layer group.

    The embedding, the first layer's attention and the rotary cache, which frees its float32 tensors, go
    through the allocator simulation; the rest of the load frees nothing and is followed by block sizes alone
    (``_allocate``): the same counts, in a fraction of the time."""
    groups = _layer_groups(spec, precision, tp)
    per_layer = _spread(copies, layers) if layers else []
    allocator = CachingAllocator()
    for t in spec.tensors:
        if first and t.loaded and t.role in (TensorRole.EMBEDDING, TensorRole.POSITION_EMBEDDING):
            allocator.malloc(tensor_bytes(_shard_tensor(t, spec, tp), precision))
        if first and t.name == "vision_tower":
            allocator.malloc(tensor_bytes(t.model_copy(update={"shape": (-(-t.shape[0] // tp),)}), precision))
    built: dict[tuple[int, ...], tuple[tuple[int, ...], ...]] = {}
    requests: list[int] = []
    for j, counts in enumerate(per_layer):
        if counts not in built:
            built[counts] = _layer_allocations(groups, counts)
        attention, rest = built[counts]
        if j == 0:
            for size in attention:
                allocator.malloc(size)
            requests += rest
        else:
            requests += attention + rest
    _rope_cache(allocator, spec, precision.compute_bytes)  # after the first layer's attention, as vLLM builds it
    if last:
        has_lm_head = any(t.role is TensorRole.LM_HEAD and t.loaded for t in spec.tensors)
        for t in spec.tensors:
            if not t.loaded or t.name.startswith(("layers.", "h.")) or t.name == "vision_tower":
                continue
            if t.role in (TensorRole.EMBEDDING, TensorRole.POSITION_EMBEDDING):
                if staged and t.role is TensorRole.EMBEDDING and not has_lm_head:
                    # The last stage materializes a tied LM head again.
                    requests.append(tensor_bytes(_shard_tensor(t, spec, tp), precision))
                continue
            requests.append(tensor_bytes(_shard_tensor(t, spec, tp), precision))
    pools = _Pools(sorted(size for size, _ in allocator.large.free), sorted(size for size, _ in allocator.small.free))
    allocated, reserved = allocator.allocated, allocator.reserved
    for size in requests:
        block, segment = _allocate(pools, size)
        allocated += block
        reserved += segment
    return WeightBlocks(allocated=allocated, reserved=reserved)


@per_spec
def weight_blocks(spec: ModelSpec, precision: Precision, tp: int, pp: int) -> tuple[WeightBlocks, ...]:
    """Per pipeline stage, what loading its weights allocates and reserves on one GPU (rotary cache included).
    Stages alike (the same layers and copies) are counted once."""
    out: list[WeightBlocks] = []
    start = 0
    for stage, layers in enumerate(pp_layer_split(spec.num_hidden_layers, pp)):
        copies = _stage_copies(spec, start, start + layers)
        out.append(_stage_blocks(spec, precision, tp, stage == 0, stage == pp - 1, pp > 1, copies, layers))
        start += layers
    return tuple(out)


__all__ = ["WeightBlocks", "weight_blocks"]
