"""The sequence of CUDA allocations and frees of a training run from a fresh process, for the allocator simulation.

``gpuplan/calc/training.py`` knows a training step's tensors by their sizes and when they coexist; this module
writes them as an ordered sequence of ``malloc`` / ``free`` events (the event format of
``gpuplan/calc/allocator.py``, as ``gpuplan/engines/transformers_allocations.py`` writes generate()'s), which the
allocator simulation replays to find the smallest GPU memory in which the run completes. The run is what
``benchmarks/sweep_min_memory.py`` measured: the model built on the GPU, the optimizer created, then two steps
of forward (with labels), backward, ``optimizer.step()`` and ``optimizer.zero_grad()`` (set_to_none=True, torch
2.x's default: torch/optim/optimizer.py ``zero_grad``).

The tensor sizes are those of the memory model (``_saved_per_token_layer``, ``_loss_terms``, ...), so the
simulated peak follows the estimated one; what the sequence adds is their order, which decides what the caching
allocator can reuse:

* model build: one allocation per parameter tensor, in module order (embedding, layers, final norm, lm_head);
* forward, per decoder layer: the tensors autograd saves (kept until that layer's backward), the residual stream
  and the norm's float32 temporaries (freed within the layer); with gradient checkpointing only the layer's
  input is kept and the layer is run again, one at a time, in the backward pass
  (torch/utils/checkpoint.py, use_reentrant=False);
* the loss as transformers 5 computes it (transformers/loss/loss_utils.py ``ForCausalLMLoss``:
  ``logits = logits.float()``, then ``fixed_cross_entropy`` = ``F.cross_entropy`` = log_softmax + nll_loss; the
  labels, not the logits, are shifted, by ``nn.functional.pad(labels, (0, 1))``): the logits, their float32
  copy, log_softmax's output; the copy is dropped once log_softmax has run (LogSoftmaxBackward saves its output);
* backward: nll_loss's gradient and log_softmax's ([T, V] float32 each), the cast back to the logits' dtype,
  then each layer in reverse: its gradient temporaries, its weight gradients (``.grad`` is the tensor the
  backward formed, AccumulateGrad keeps it: torch/csrc/autograd/functions/accumulate_grad.h) and the release
  of its saved tensors (a node's saved variables are released right after it runs when retain_graph is False);
  the embedding's gradient is written in the gradient's dtype ([V, h]), and a tied weight's two gradients are
  added (gpuplan/calc/training.py ``embedding_backward_bytes``);
* ``optimizer.step()``: AdamW's states are created lazily at the first step, per parameter in parameter order,
  ``exp_avg`` then ``exp_avg_sq`` (torch/optim/adam.py ``_init_group``: ``torch.zeros_like(p)`` twice, the step
  counter a CPU scalar), then the foreach update allocates ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)``,
  one tensor per parameter, and frees them when it returns (torch/optim/adam.py ``_multi_tensor_adam``; the
  other foreach ops work in place); then ``zero_grad`` frees every gradient.

Tensors of 1 MiB or less go to the allocator's small pool (c10/cuda/CUDACachingAllocator.cpp kSmallSize), which
never serves a large request: they are replayed apart, as for generate().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from gpuplan.calc.allocator import AllocatorFit, Event, fit_whole
from gpuplan.calc.op_sequences import rotary_embedding
from gpuplan.calc.overhead import CUBLAS_WORKSPACE_BYTES
from gpuplan.calc.training import (
    FP32,
    TrainingSetup,
    _Dims,
    _final_norm_bytes,
    _loss_terms,
    _saved_per_token_layer,
    _trainable_bytes_per_param,
    base_weights_bytes,
    lora_saved_parts,
    lora_target_tensors,
    module_in,
    tied_gradients_summed_out_of_place,
)
from gpuplan.models.spec import ModelSpec, TensorGroup, TensorRole

# A training run stores labels and input ids as int64 (torch.long) per token.
INT64 = 8
STEPS = 2  # the measured run: two optimizer steps from a fresh process (benchmarks/sweep_min_memory.py)


@dataclass
class _Trace:
    """The event list; ``alloc`` returns a tensor id for ``free``."""

    events: list[Event] = field(default_factory=list)
    next_id: int = 0

    def alloc(self, size: int) -> int:
        self.next_id += 1
        self.events.append(("a", self.next_id, max(int(size), 1)))
        return self.next_id

    def free(self, *tensors: int) -> None:
        for tensor in tensors:
            self.events.append(("f", tensor, 0))


@dataclass(frozen=True)
class _Layout:
    """Sizes (bytes) of one run's tensors, derived from the memory model in gpuplan/calc/training.py."""

    layers: int
    tokens: int
    stream: int  # one [T, h] residual-stream tensor
    norm_temp: int  # the norm's float32 temporaries, [T, h] float32
    saved: tuple[tuple[int, ...], tuple[int, ...]]  # the tensors the attention block and the FFN block save
    ffn_temp: int  # a [T, I] temporary in the compute dtype
    layer_params: tuple[int, ...]  # trainable tensors of one decoder layer (their gradients / states)
    outer_params: tuple[int, ...]  # trainable tensors outside the layers (embedding first)
    base_layer: tuple[int, ...]  # every weight tensor of one layer as built
    base_outer: tuple[int, ...]
    embedding_grad: int  # [V, h] of embedding_dense_backward, in the gradient's dtype; 0 when the embedding is frozen
    tied_grad: int  # the tied lm_head's weight gradient ([V, h], the embedding's .grad); 0 when untied or frozen
    trained_bytes: int  # bytes per element of a gradient / optimizer state
    logits: int  # [T, V] in the compute dtype
    logits32: int  # [T, V] float32
    softcap: int  # the soft cap's tanh output, [T, V] (Gemma-2), else 0
    final_saved: int  # the final norm and the lm_head's input
    layer_casts: tuple[int, ...]  # autocast's bf16 copies of a layer's weights (mixed precision)
    head_cast: int
    checkpointing: bool
    optimizer: str
    tied_sum_out_of_place: bool = False  # a tied weight's two gradients are added into a new tensor
    # Each LoRA-adapted linear of the attention block and of the FFN block: (input, output) bytes per element
    # count, i.e. (T x in_features, T x out_features); empty without LoRA or under autocast.
    lora_linears: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = ((), ())
    compute_bytes: int = 2
    # apply_rotary_pos_emb on q and k: (index in saved[0] of the rotated q, [T, q] bytes, [T, kv] bytes); None
    # without rotary embeddings or where the attention's saved tensors are not split.
    rope: tuple[int, int, int] | None = None
    # Per block (attention, FFN): its adapted linears replayed op by op (_LoraBlock), or None where the block's
    # shape is not one _lora_block_forward knows (its adapters' temporaries are then written first).
    lora_blocks: tuple[_LoraBlock | None, _LoraBlock | None] = (None, None)


@dataclass(frozen=True)
class _LoraBlock:
    """A block whose linears all carry LoRA adapters, without autocast: Llama-style attention (q, k, v, o with
    rotary embeddings) or a gated FFN (gate, up, down). Its saved tensors (bytes) in three parts: the norm's
    (``lead``), each adapted linear's own (``linears``: the linear's output elements and what its adapter keeps,
    peft's float32 input copy and lora_A's output), and the attention's or the FFN's (``rest``)."""

    lead: tuple[int, ...]
    linears: tuple[tuple[int, tuple[int, ...]], ...]
    rest: tuple[int, ...]
    attention: bool


def _split_saved(d: _Dims) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One layer's saved tensors, per token, as the attention block and the FFN block save them, split into the
    tensors they are. The sizes are ``_saved_per_token_layer``'s components (they add up to them exactly): each
    norm's float32 upcast and its normed output; the attention's q, k, v, output and logsumexp; the FFN's
    [T, I] tensors; each LoRA adapter's float32 input copy and its [T, r] lora_A output (peft
    tuners/lora/layer.py Linear.forward); a component that does not split so is kept whole."""
    parts = _saved_per_token_layer(d)
    attn: list[int] = []
    ffn: list[int] = []
    norms, norm_split = parts.pop("norms", 0), []
    if norms and norms % (2 * d.h) == 0 and norms // 2 > FP32 * d.h:
        norm_split = [FP32 * d.h, norms // 2 - FP32 * d.h]
    for block in (attn, ffn):
        block += norm_split or [norms // 2]
    if norms and not norm_split:
        ffn[-1] += norms - 2 * (norms // 2)
    linear = parts.pop("linear_inputs", 0)
    if linear:
        attn.append(linear // 2)
        ffn.append(linear - linear // 2)
    lora = parts.pop("lora_inputs", 0)
    lora_parts = _lora_split(d)
    if lora and sum(size for _, size in lora_parts) == lora:
        attn += [size for name, size in lora_parts if name not in _FFN_NAMES]
        ffn += [size for name, size in lora_parts if name in _FFN_NAMES]
    elif lora:
        ffn.append(lora)
    attention = parts.pop("attention", 0)
    if attention == (2 * d.q + d.kv + d.kv_v) * d.e + d.heads * FP32:
        attn += [d.q * d.e, d.kv * d.e, d.kv_v * d.e, d.heads * FP32, d.q * d.e]
    elif attention:
        attn.append(attention)
    if parts.get("qk_norm"):
        attn.append(parts.pop("qk_norm"))
    mlp = parts.pop("mlp", 0)
    if mlp and mlp % (d.I * d.e) == 0:
        ffn += [d.I * d.e] * (mlp // (d.I * d.e))
    elif mlp:
        ffn.append(mlp)
    ffn += [size for size in parts.values() if size]
    return tuple(x for x in attn if x), tuple(x for x in ffn if x)


# The FFN's linears (their adapters' saved inputs belong to the FFN block).
_FFN_NAMES = {"gate_proj", "up_proj", "down_proj", "c_fc", "fc1", "fc2", "gate_up_proj", "dense_h_to_4h",
              "dense_4h_to_h", "w1", "w2", "w3", "mlp.c_proj"}


def _lora_split(d: _Dims) -> list[tuple[str, int]]:
    """The adapters' saved tensors per token (``lora_saved_parts``), named by their module, without autocast;
    empty under autocast, and the component stays whole."""
    if not d.lora or d.autocast:
        return []
    return [("mlp.c_proj" if module_in(t, {"mlp.c_proj"}) else t.name.split(".")[-2], size)
            for t, size in lora_saved_parts(d)]


def _built_tensors(spec: ModelSpec) -> tuple[list[tuple[int, TensorGroup]], list[tuple[int, TensorGroup]]]:
    """(elements, group) of the parameter tensors as transformers builds them: those of one decoder layer, and
    those outside the layers (embedding first), one entry per tensor. transformers 5 stores a layer's experts
    as fused 3-D parameters (one tensor for all experts of a layer: modeling_qwen3_moe.py Qwen3MoeExperts), so
    a group counted per layer and expert is one tensor per MoE layer."""
    layers = spec.num_hidden_layers
    moe = spec.moe
    per_layer: list[tuple[int, TensorGroup]] = []
    outer: list[tuple[int, TensorGroup]] = []
    for t in spec.tensors:
        if not t.loaded:
            continue
        numel, count = t.numel, t.count
        if moe is not None and t.role is TensorRole.EXPERT_LINEAR and count % moe.num_experts == 0:
            numel, count = numel * moe.num_experts, count // moe.num_experts
        if count == layers:
            per_layer.append((numel, t))
        else:
            outer += [(numel, t)] * count
    outer.sort(key=lambda item: item[1].role is not TensorRole.EMBEDDING)
    return per_layer, outer


def _layout(spec: ModelSpec, setup: TrainingSetup, d: _Dims) -> _Layout:
    T = d.T
    layers = spec.num_hidden_layers
    per_layer, outer = _built_tensors(spec)
    base_total = base_weights_bytes(spec, setup)
    numel = spec.loaded_parameters
    per_elem = base_total / numel if numel else 2
    base_layer = tuple(int(n * per_elem) for n, _ in per_layer)
    base_outer = tuple(int(n * per_elem) for n, _ in outer)
    p_bytes = _trainable_bytes_per_param(setup)
    if setup.method == "full":
        layer_params = tuple(n * p_bytes for n, _ in per_layer)
        outer_params = tuple(n * p_bytes for n, _ in outer)
        emb = max((t.numel for t in spec.tensors if t.role is TensorRole.EMBEDDING), default=0)
    else:
        adapted = lora_target_tensors(spec, setup.lora_targets)
        layer_params = tuple(size for t in adapted if t.count == layers
                             for size in (setup.lora_rank * t.shape[1] * FP32, t.shape[0] * setup.lora_rank * FP32))
        outer_params = tuple(size for t in adapted if t.count != layers for _ in range(t.count)
                             for size in (setup.lora_rank * t.shape[1] * FP32, t.shape[0] * setup.lora_rank * FP32))
        emb = 0
    casts: tuple[int, ...] = ()
    head_cast = 0
    if d.autocast:
        # torch.autocast casts each float32 weight of a linear to bf16 (aten/src/ATen/autocast_mode.cpp
        # cached_cast), as _linear_weight_elements in gpuplan/calc/training.py counts them.
        casts = tuple(2 * n for n, t in per_layer if len(t.shape) == 2 and t.role in (
            TensorRole.LINEAR, TensorRole.ROUTER, TensorRole.EXPERT_LINEAR))
        head = [t for t in spec.tensors if t.role is TensorRole.LM_HEAD] or \
            [t for t in spec.tensors if t.role is TensorRole.EMBEDDING]
        head_cast = 2 * sum(t.numel for t in head)
    saved = _split_saved(d)
    lora_linears: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
    if d.lora and not d.autocast:
        for t in lora_target_tensors(spec, setup.lora_targets):
            if t.count == layers:
                block = 1 if module_in(t, _FFN_NAMES) else 0
                lora_linears[block].append((T * t.shape[1], T * t.shape[0]))
    rope = None
    q_bytes, k_bytes = T * d.q * d.e, T * d.kv * d.e
    rotary = not any(t.role is TensorRole.POSITION_EMBEDDING for t in spec.tensors) and spec.mla is None
    for index in range(len(saved[0]) - 1):
        if rotary and (T * saved[0][index], T * saved[0][index + 1]) == (q_bytes, k_bytes):
            rope = (index, q_bytes, k_bytes)
            break
    lora_blocks = _lora_blocks(spec, d, saved, lora_linears) if d.lora and not d.autocast else (None, None)
    if rope is None:
        lora_blocks = (None, lora_blocks[1])
    return _Layout(
        layers=layers, tokens=T, rope=rope, stream=T * d.h * d.r, norm_temp=T * d.h * FP32,
        saved=(tuple(T * size for size in saved[0]), tuple(T * size for size in saved[1])),
        ffn_temp=T * d.I * d.e, layer_params=layer_params, outer_params=outer_params, base_layer=base_layer,
        base_outer=base_outer, embedding_grad=emb * p_bytes,
        tied_sum_out_of_place=tied_gradients_summed_out_of_place(d.autocast),
        tied_grad=emb * p_bytes if spec.tie_word_embeddings else 0, trained_bytes=p_bytes,
        logits=T * d.V * d.e, logits32=T * d.V * FP32, softcap=_loss_terms(d)["loss_kept"] - T * d.V * FP32,
        final_saved=_final_norm_bytes(d) * T, layer_casts=casts,
        head_cast=head_cast, checkpointing=setup.grad_checkpointing, optimizer=setup.optimizer,
        lora_linears=(tuple(lora_linears[0]), tuple(lora_linears[1])), compute_bytes=d.e, lora_blocks=lora_blocks)


def _lora_blocks(spec: ModelSpec, d: _Dims, saved: tuple[tuple[int, ...], tuple[int, ...]],
                 lora_linears: tuple[list[tuple[int, int]], list[tuple[int, int]]]
                 ) -> tuple[_LoraBlock | None, _LoraBlock | None]:
    """The blocks that :func:`_lora_block_forward` replays op by op (per-token sizes scaled to the step's
    tokens); None for a block of another shape or a compute dtype of float32 (whose adapters copy nothing)."""
    if d.e == FP32:
        return None, None
    T = d.T
    kept: tuple[list[list[int]], list[list[int]]] = ([], [])
    previous = None
    for t, size in lora_saved_parts(d):
        block = kept[1 if module_in(t, _FFN_NAMES) else 0]
        if t is not previous:
            block.append([])
            previous = t
        block[-1].append(T * size)
    blocks: list[_LoraBlock | None] = []
    for index, attention in ((0, True), (1, False)):
        group = [T * size for size in saved[index]]
        linears = lora_linears[index]
        flat = [size for parts in kept[index] for size in parts]
        starts = [i for i in range(1, len(group) - len(flat) + 1) if group[i:i + len(flat)] == flat]
        outs = [out * d.e for _, out in linears]
        if not starts or len(kept[index]) != len(linears):
            blocks.append(None)
            continue
        lead, rest = group[:starts[0]], group[starts[0] + len(flat):]
        if attention:
            # (rotary embeddings: _layout drops the attention block where it found none)
            shape = outs == [T * d.q * d.e, T * d.kv * d.e, T * d.kv_v * d.e, T * d.h * d.e] and rest[:3] == outs[:3]
        else:
            shape = spec.ffn_gated and outs == [T * d.I * d.e] * 2 + [T * d.h * d.e] and rest[:3] == [outs[0]] * 3
        adapted = tuple((out, tuple(parts)) for (_, out), parts in zip(linears, kept[index], strict=True))
        blocks.append(_LoraBlock(lead=tuple(lead), rest=tuple(rest), attention=attention, linears=adapted)
                      if shape else None)
    return blocks[0], blocks[1]


def _layer_forward(trace: _Trace, lay: _Layout, stream: int, keep_all: bool,
                   first_matmul: bool = False) -> tuple[int, list[int]]:
    """One decoder layer's forward: the norm's float32 temporaries, the tensors autograd saves, the residual
    adds. Returns the new stream tensor and the saved tensors (freed at once when ``keep_all`` is False:
    a checkpointed layer under no_grad-like recomputation keeps nothing). ``first_matmul``: this layer runs the
    process's first matmul, which allocates the main thread's cuBLAS workspace once the norm has run."""
    saved: list[int] = []
    casts = [trace.alloc(size) for size in lay.layer_casts]
    for block, group in enumerate(lay.saved):
        lora_block = lay.lora_blocks[block]
        if keep_all and lora_block is not None:
            stream, kept = _lora_block_forward(trace, lay, lora_block, stream, first_matmul)
            saved += kept
            first_matmul = False
            continue
        # RMSNorm (modeling_llama.py LlamaRMSNorm): hidden.to(float32).pow(2) is a temporary beside the kept ones.
        squared = trace.alloc(lay.norm_temp)
        for _, out in lay.lora_linears[block]:
            _lora_forward(trace, out, lay.compute_bytes)
        projected: list[int] = []
        for index, size in enumerate(group):
            if block == 0 and lay.rope is not None and index in (lay.rope[0], lay.rope[0] + 1):
                # The projection's output, rotated into a new tensor (modeling_llama.py apply_rotary_pos_emb:
                # q * cos + rotate_half(q) * sin, rotate_half = cat(-x2, x1)); the projections die once both are.
                width = lay.rope[1] if index == lay.rope[0] else lay.rope[2]
                projected.append(trace.alloc(width))
                saved.append(rotary_embedding(trace, size))
                if index == lay.rope[0] + 1:
                    trace.free(*projected)
            else:
                saved.append(trace.alloc(size))
            if first_matmul and index == min(1, len(group) - 1):
                trace.alloc(CUBLAS_WORKSPACE_BYTES)  # kept for the life of the process
                first_matmul = False
            if not keep_all and len(saved) > 2:
                # Under checkpointing nothing is saved: a tensor dies once the next operations have read it.
                trace.free(saved.pop(0))
        trace.free(squared)
        # residual + sublayer output: a new stream tensor; the old one is dropped (AddBackward saves nothing).
        new_stream = trace.alloc(lay.stream)
        trace.free(stream)
        stream = new_stream
    if not keep_all:
        trace.free(*saved, *casts)
        return stream, []
    return stream, saved + casts


def _lora_block_forward(trace: _Trace, lay: _Layout, block: _LoraBlock, stream: int,
                        first_matmul: bool) -> tuple[int, list[int]]:
    """A LoRA-adapted block's forward in the order its operations run, each adapted linear's temporaries
    beside its own saved tensors (the order of the recorded traces, traces/training/): the norm; then q, k, v
    (each adapter's float32 input copy and lora_A's output kept, the linear's output cast back to the compute
    dtype), q and k rotated into new tensors, v kept as projected, the attention's output and logsumexp, o; or
    gate, its activation, up, their product (read by down only: its frozen weight keeps nothing, its adapter
    a float32 copy), down. The last linear's output is the sublayer's, added to the residual stream. Returns
    the new stream tensor and the block's saved tensors."""
    saved: list[int] = []
    squared = trace.alloc(lay.norm_temp)
    saved += [trace.alloc(size) for size in block.lead]
    trace.free(squared)
    if first_matmul:
        trace.alloc(CUBLAS_WORKSPACE_BYTES)  # kept for the life of the process
    e = lay.compute_bytes
    product = None
    if block.attention:
        projections = []
        for out, parts in block.linears[:3]:
            projection, kept = _lora_linear(trace, out, parts, e)
            saved += kept
            projections.append(projection)
        saved += [rotary_embedding(trace, block.rest[0]), rotary_embedding(trace, block.rest[1])]
        trace.free(*projections[:2])
        saved.append(projections[2])
    else:
        gate, kept = _lora_linear(trace, *block.linears[0], e)
        saved += [*kept, gate, trace.alloc(block.rest[1])]
        up, kept = _lora_linear(trace, *block.linears[1], e)
        saved += [*kept, up]
        product = trace.alloc(block.rest[2])
    saved += [trace.alloc(size) for size in block.rest[3:]]
    output, kept = _lora_linear(trace, *block.linears[-1], e)
    saved += kept
    if product is not None:
        trace.free(product)
    new_stream = trace.alloc(lay.stream)
    trace.free(output, stream)
    return new_stream, saved


def _lora_linear(trace: _Trace, out: int, parts: tuple[int, ...], e: int) -> tuple[int, list[int]]:
    """One LoRA-adapted linear's forward (peft tuners/lora/layer.py Linear.forward): the base layer's output,
    the adapter's kept tensors (``parts``), lora_B's float32 output, its scaled copy, the float32 sum (the base
    output freed as ``result`` is rebound), the sum cast back to the compute dtype (in float32 the sum is the
    output). Returns the output and the kept tensors."""
    base = trace.alloc(out * e)
    kept = [trace.alloc(size) for size in parts]
    b_out = trace.alloc(out * FP32)
    scaled = trace.alloc(out * FP32)
    trace.free(b_out)
    summed = trace.alloc(out * FP32)
    trace.free(scaled, base)
    if e == FP32:
        return summed, kept
    cast = trace.alloc(out * e)
    trace.free(summed)
    return cast, kept


def _lora_forward(trace: _Trace, out: int, e: int) -> None:
    """The temporaries of one LoRA-adapted linear's forward (peft tuners/lora/layer.py Linear.forward: the
    base layer's output, then ``result = result + lora_B(lora_A(x)) * scaling`` in the adapters' float32,
    then ``result.to(torch_result_dtype)``): lora_B's output, its scaled copy, the float32 sum, the base output
    freed as ``result`` is rebound. The cast result stands for the linear's output, which the block's saved
    tensors already count, so it is freed here too."""
    output, _ = _lora_linear(trace, out, (), e)
    trace.free(output)


def _lora_backward(trace: _Trace, inp: int, out: int, e: int) -> None:
    """The temporaries of one LoRA-adapted linear's backward, in the order of the recorded traces: the float32
    gradient of the sum (the cast's backward), the gradient of the base output (held until the base layer's
    backward), that of lora_B's output (the scaling's), lora_A's input gradient in float32 and its cast back,
    the base layer's input gradient and the sum of the two."""
    grad_sum = trace.alloc(out * FP32)
    grad_base_out = trace.alloc(out * e) if e != FP32 else None
    grad_b = trace.alloc(out * FP32)
    trace.free(grad_sum, grad_b)
    grad_x32 = trace.alloc(inp * FP32)
    grad_x = trace.alloc(inp * e) if e != FP32 else None
    trace.free(grad_x32)
    grad_base = trace.alloc(inp * e)
    if grad_base_out is not None:
        trace.free(grad_base_out)
    total = trace.alloc(inp * e)
    trace.free(grad_base, total)
    if grad_x is not None:
        trace.free(grad_x)


def _layer_backward(trace: _Trace, lay: _Layout, saved: list[int], grads: list[int]) -> None:
    """One layer's backward: the FFN's and attention's gradient temporaries ([T, I] and [T, h]), its weight
    gradients (kept as .grad), its saved tensors released as their nodes run (last saved first)."""
    order = list(reversed(saved))
    ffn_block = len(lay.saved[1]) + len(lay.layer_casts)  # the FFN's backward runs first
    for index, group in enumerate((order[:ffn_block], order[ffn_block:])):
        for inp, out in reversed(lay.lora_linears[1 - index]):
            _lora_backward(trace, inp, out, lay.compute_bytes)
        grad_in = trace.alloc(lay.stream)
        inner = trace.alloc(lay.ffn_temp if index == 0 else lay.stream)
        params = lay.layer_params[len(lay.layer_params) // 2:] if index == 0 else \
            lay.layer_params[:len(lay.layer_params) // 2]
        grads += [trace.alloc(size) for size in reversed(params)]
        trace.free(inner, *group)
        trace.free(grad_in)


def _step(trace: _Trace, lay: _Layout, states: list[int], first: bool) -> None:
    """One training step: forward with labels, backward, optimizer.step(), zero_grad()."""
    ids = trace.alloc(lay.tokens * INT64)
    labels = trace.alloc(lay.tokens * INT64)
    stream = trace.alloc(lay.stream)  # embed_tokens
    inputs: list[int] = []
    saved: list[list[int]] = []
    for layer in range(lay.layers):
        # A fresh process allocates the cuBLAS workspace of a thread's handle at that thread's first matmul
        # (aten/src/ATen/cuda/CublasHandlePool.cpp getCurrentCUDABlasHandle: one per handle and stream, never
        # freed): the main thread's in the first layer's forward of the first step.
        first_matmul = first and layer == 0
        if lay.checkpointing:
            inputs.append(stream)  # torch.utils.checkpoint keeps the layer's input
            kept_input = stream
            stream = trace.alloc(lay.stream)
            stream, _ = _layer_forward(trace, lay, stream, keep_all=False, first_matmul=first_matmul)
            del kept_input
        else:
            stream, layer_saved = _layer_forward(trace, lay, stream, keep_all=True, first_matmul=first_matmul)
            saved.append(layer_saved)
    final = trace.alloc(lay.final_saved)
    trace.free(stream)
    head_cast = trace.alloc(lay.head_cast) if lay.head_cast else None
    logits = trace.alloc(lay.logits)
    # Gemma-2's final soft cap keeps tanh's output for the backward pass (training.py _LOGIT_SOFTCAP).
    softcap = trace.alloc(lay.softcap) if lay.softcap else None
    # ForCausalLMLoss: labels padded and shifted (int64), logits.float(), log_softmax, nll_loss.
    shifted = trace.alloc(lay.tokens * INT64)
    upcast = trace.alloc(lay.logits32) if lay.logits != lay.logits32 else None
    log_probs = trace.alloc(lay.logits32)
    if upcast is not None:
        trace.free(upcast)
    trace.free(logits)  # the model's outputs (and their logits) are dropped once the loss is formed
    grads: list[int] = []
    # Backward: nll_loss_backward's gradient, log_softmax_backward's, the cast back, the lm_head's backward.
    grad_nll = trace.alloc(lay.logits32)
    grad_logits32 = trace.alloc(lay.logits32)
    trace.free(grad_nll, log_probs, shifted)
    grad_logits = trace.alloc(lay.logits) if lay.logits != lay.logits32 else grad_logits32
    if grad_logits != grad_logits32:
        trace.free(grad_logits32)
    # The lm_head's backward: its weight gradient first, then the gradient of its input (the order of the
    # recorded traces); autograd's device thread allocates its own cuBLAS workspace at its first matmul, after
    # that matmul's output (torch/csrc/autograd/engine.cpp runs the backward on a thread of its own).
    grads += [trace.alloc(size) for size in reversed(lay.outer_params[1:])]
    # A tied lm_head's weight gradient becomes the embedding's .grad; the embedding's own backward adds to it
    # in place (AccumulateGrad with grad mode off: accumulate_grad.h ``variable_grad += new_grad``).
    tied_grad = trace.alloc(lay.tied_grad) if lay.tied_grad else None
    head_grad = bool(lay.outer_params[1:]) or tied_grad is not None
    if first and head_grad:
        trace.alloc(CUBLAS_WORKSPACE_BYTES)
    grad_stream = trace.alloc(lay.stream)
    if first and not head_grad:
        trace.alloc(CUBLAS_WORKSPACE_BYTES)
    trace.free(grad_logits, final)
    if softcap is not None:
        trace.free(softcap)
    if head_cast is not None:
        trace.free(head_cast)
    for layer in reversed(range(lay.layers)):
        if lay.checkpointing:
            # The recompute (checkpoint.py _checkpoint_hook unpack) runs the layer again from its kept input.
            stream_copy, layer_saved = _layer_forward(trace, lay, trace.alloc(lay.stream), keep_all=True)
            trace.free(inputs[layer])
        else:
            layer_saved = saved[layer]
            stream_copy = trace.alloc(lay.stream)
        _layer_backward(trace, lay, layer_saved, grads)
        trace.free(stream_copy)
    if lay.embedding_grad:
        # embedding_dense_backward's [V, h] in the gradient's dtype; a tied weight's two gradients are added out
        # of place except under autocast (training.py embedding_backward_bytes).
        dense = trace.alloc(lay.embedding_grad)
        if tied_grad is None:
            grads.append(dense)
        elif lay.tied_sum_out_of_place:
            total = trace.alloc(lay.embedding_grad)
            trace.free(dense, tied_grad)
            grads.append(total)
        else:
            trace.free(dense)
            grads.append(tied_grad)
    elif lay.outer_params:
        grads.append(trace.alloc(lay.outer_params[0]))
    trace.free(grad_stream, ids, labels)
    _optimizer_step(trace, lay, states, first)
    trace.free(*grads)  # zero_grad(set_to_none=True)


def _param_order(lay: _Layout) -> list[int]:
    """Trainable tensors in model.parameters() order: the embedding, the layers, then the rest."""
    return list(lay.outer_params[:1]) + list(lay.layer_params) * lay.layers + list(lay.outer_params[1:])


def _optimizer_step(trace: _Trace, lay: _Layout, states: list[int], first: bool) -> None:
    params = _param_order(lay)
    if lay.optimizer == "adamw":
        if first:
            for size in params:  # adam.py _init_group: exp_avg, exp_avg_sq = zeros_like(p), zeros_like(p)
                states += [trace.alloc(size), trace.alloc(size)]
        # _multi_tensor_adam: exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs), freed on return.
        temps = [trace.alloc(size) for size in params]
        trace.free(*temps)
    elif lay.optimizer == "sgd-momentum" and first:
        # torch/optim/sgd.py: momentum_buffer = torch.clone(grad).detach() at the first step.
        states += [trace.alloc(size) for size in params]
    elif lay.optimizer == "adamw-8bit" and first:
        # bitsandbytes Optimizer2State.init_state: two uint8 states per element (4-byte absmax per 256 left out:
        # they are small-pool tensors).
        states += [trace.alloc(size // lay.trained_bytes) for size in params for _ in range(2)]
    elif lay.optimizer == "adafactor" and first:
        # transformers/optimization.py Adafactor: factored float32 row / column statistics (small tensors).
        states += [trace.alloc(int(size ** 0.5) * FP32) for size in params]


def training_events(spec: ModelSpec, setup: TrainingSetup) -> list[Event]:
    """Every allocation and free of a one-GPU training run from a fresh process: the weights, then ``STEPS``
    steps (the first allocates the two cuBLAS workspaces)."""
    # As estimate_training sizes them: a base prepared by prepare_model_for_kbit_training computes in float32.
    d = _Dims(spec, setup.model_copy(update={"precision": "fp32"}) if setup.prepare_kbit else setup)
    lay = _layout(spec, setup, d)
    trace = _Trace()
    for size in lay.base_outer[:1] + lay.base_layer * lay.layers + lay.base_outer[1:]:
        trace.alloc(size)
    if setup.method != "full":
        for size in _param_order(lay):  # peft's adapters, created after the base model
            trace.alloc(size)
    states: list[int] = []
    for step in range(STEPS):
        _step(trace, lay, states, first=step == 0)
    return trace.events


@lru_cache(maxsize=256)
def training_allocator_fit(spec: ModelSpec, setup: TrainingSetup, expandable_segments: bool = False) -> AllocatorFit:
    """The training run's sequence through the caching-allocator simulation (gpuplan/calc/allocator.py), both
    pools under one limit (``fit_whole``)."""
    return fit_whole(training_events(spec, setup), expandable_segments=expandable_segments)
