"""What the V0 profile run of vLLM 0.3.1-0.6.3 leaves reserved in torch's caching allocator, and its peak of live
tensors, which the V0 rule of 0.6.5-0.10.2 charges (``utils.py`` ``memory_profiling`` in 0.6.5 and 0.6.6: the rise of
``torch.cuda.memory_stats()["allocated_bytes.all.peak"]`` over ``profile_run``).

Under these releases the KV budget is ``total x utilization - (init_free - free after profile_run)``
(``worker/worker.py`` ``determine_num_available_blocks`` in 0.3.3, 0.4.1, 0.4.2, 0.5.4 and 0.6.3): free memory
is read with ``torch.cuda.mem_get_info`` after ``profile_run`` and before any ``torch.cuda.empty_cache``
(the one call before the profile run releases only what loading left cached; the one after comes once the
blocks are counted). So the charge is what the allocator has *reserved* by the end of the profile run (it
never hands a segment back unless a request fails), not the live tensors' peak: every segment that the
forward and the sampler cut for their differently sized temporaries stays charged.

This module writes the profile run's tensors as a sequence of ``malloc`` / ``free`` events, one Python
statement at a time (a temporary dies when its statement ends; a local name keeps its tensor alive until
its function returns or the name is rebound), and replays it through gpuplan.calc.allocator. Sources, the
0.4.1 wheel unless another release is named:

* ``worker/model_runner.py`` ``profile_run`` / ``execute_model``: the model's output hidden states and the
  ``logits`` of ``compute_logits`` stay alive in ``execute_model`` while ``self.model.sample`` runs.
* ``model_executor/models/llama.py`` (Llama, Mistral; Qwen2's qwen2.py has the same modules):
  ``LlamaModel.forward`` keeps ``residual`` (the embedding output, updated in place by
  ``fused_add_rms_norm``, ``layers/layernorm.py``); layer 0's ``input_layernorm`` allocates its output
  (``torch.empty_like``), later layers norm in place. ``LlamaAttention.forward`` holds ``qkv`` until it
  returns; ``LlamaMLP.forward`` holds ``gate_up`` until it returns, beside ``SiluAndMul``'s output
  (``layers/activation.py``, ``torch.empty``) and ``down_proj``'s (from 0.6.5 llama.py rebinds the name, so
  ``gate_up`` dies once the activation is made; qwen2.py keeps it).
* ``model_executor/models/opt.py``: ``nn.LayerNorm`` and the residual sums allocate new tensors;
  ``OPTDecoder.forward`` keeps ``inputs_embeds`` and ``pos_embeds`` alive through the layers.
* Attention (``attention/backends/xformers.py`` and ``flash_attn.py``, 0.4.1 to 0.5.4): ``output =
  torch.empty_like(query)``, the kernel returns ``out``, copied into ``output``; 0.3.3's
  ``layers/attention.py``, 0.4.0's ``backends/xformers.py`` and 0.6.3's ``unified_flash_attention`` return
  the kernel's output alone. (0.3.x pads the prompts to one length, ``[seqs, T // seqs]`` here: the same
  tokens when ``seqs`` divides ``T``.)
* ``layers/logits_processor.py``: ``hidden_states.index_select`` of one row per sequence, then
  ``torch.matmul`` over the padded vocabulary (sliced, a view).
* ``layers/sampler.py``: ``_apply_top_k_top_p`` (the profile run sets ``top_k = vocab - 1``, ``top_p =
  0.99``) holds the sorted values and indices, two masks, the softmax and cumsum of the sorted values and
  the re-ordered logits until it returns: through 0.6.0 by ``scatter_`` of the indices and ``gather``, in
  0.6.3 by one ``scatter_`` of the values. ``Sampler.forward`` casts the logits to fp32 from 0.6.0 (0.5.4 has
  no cast), then ``probs`` and ``logprobs`` (fp32); ``_sample_with_torch`` passes ``probs[indices]`` (a copy)
  to ``_multinomial``, which draws ``torch.empty_like(probs).exponential_()``.
* The cuBLAS workspace (torch's aten/src/ATen/cuda/CublasHandlePool.cpp: ``getNewWorkspace`` takes it from the
  caching allocator, ``parseChosenWorkspaceSize`` defaults to ``4096 * 1024 * 2 + 16 * 1024 * 8`` bytes off
  sm90, 32 MiB on sm90, not modelled here), made at the first matmul, after the ``init_gpu_memory`` snapshot,
  and kept. The wheels pin torch 2.1.2 (0.3.3, 0.4.0.post1), 2.2.1 (0.4.1), 2.3.0 (0.4.2) and 2.4.0 (0.5.4-0.6.3)
  by their METADATA; the workspace code was not read release by release.

Left out: the input metadata (token ids, positions, slot mapping: a few bytes a token), the attention
kernel's log-sum-exp ([heads, T] fp32), xformers' handling of grouped KV heads (0.3.3-0.4.x expand K and V
to every query head as views; a copy made inside the kernel is not modelled), and the rests the weights' segments
split off: the weights are charged as the blocks their load allocates (``weight_blocks``), and a split-off
rest of a segment, free, may serve the profile run, which is replayed here on an allocator of its own.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from gpuplan.calc.allocator import Event, replay
from gpuplan.engines.tp import ParallelLayout
from gpuplan.models.spec import ModelSpec

FP32 = 4
INT64 = 8
BOOL = 1
# aten/src/ATen/cuda/CublasHandlePool.cpp parseChosenWorkspaceSize, the default off sm90 (":4096:2:16:8").
CUBLAS_WORKSPACE_PRE_SM90 = 4096 * 1024 * 2 + 16 * 1024 * 8


class V0ProfileShape(NamedTuple):
    """The profile run's tensors on one GPU (widths per TP rank)."""

    module: str  # "llama" (fused RMSNorm, gated MLP) or "opt" (LayerNorm, plain MLP)
    layers: int
    hidden: int
    q_width: int
    kv_width: int
    intermediate: int
    vocab: int
    padded_vocab: int
    tokens: int
    seqs: int
    e: int
    tp: int
    last_stage: bool
    fp32_logits: bool  # Sampler.forward casts the logits to fp32 (0.6.0+)
    scatter_values: bool  # _apply_top_k_top_p re-orders by one scatter_ of the values (0.6.3)
    attention_buffer: bool  # the backend copies the kernel's output into empty_like(query) (to 0.5.4)
    mlp_keeps_gate_up: bool  # the MLP holds gate_up until it returns (else x is rebound to the activation)


class V0ProfileReservation(NamedTuple):
    peak_reserved: int
    peak_allocated: int


class _Trace:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._next = 0

    def alloc(self, size: int) -> int:
        self._next += 1
        self.events.append(("a", self._next, max(size, 1)))
        return self._next

    def free(self, *tensors: int) -> None:
        self.events.extend(("f", t, 0) for t in tensors)


def _attention(tr: _Trace, s: V0ProfileShape, qkv_width: int) -> int:
    """qkv projection, attention and output projection; returns the projection's output (qkv and the
    attention output are freed when the attention module returns)."""
    t, e = s.tokens, s.e
    qkv = tr.alloc(t * qkv_width * e)
    if s.attention_buffer:
        output = tr.alloc(t * s.q_width * e)
        out = tr.alloc(t * s.q_width * e)
        tr.free(out)  # copied into output[:num_prefill_tokens]; the statement's temporary dies
    else:
        output = tr.alloc(t * s.q_width * e)
    projected = tr.alloc(t * s.hidden * e)
    tr.free(qkv, output)
    return projected


def _llama_layers(tr: _Trace, s: V0ProfileShape) -> int:
    """LlamaModel.forward; returns the hidden states it hands back (the residual dies as it returns)."""
    t, h, e = s.tokens, s.hidden, s.e
    residual = tr.alloc(t * h * e)  # embedding output, the residual stream from layer 0 on
    hidden = tr.alloc(t * h * e)  # layer 0's input_layernorm output (empty_like)
    for _ in range(s.layers):
        attn = _attention(tr, s, s.q_width + 2 * s.kv_width)
        tr.free(hidden)  # the layer input, rebound to the attention output
        gate_up = tr.alloc(t * 2 * s.intermediate * e)
        act = tr.alloc(t * s.intermediate * e)
        if not s.mlp_keeps_gate_up:
            tr.free(gate_up)  # x = self.act_fn(x): the gate_up output loses its last name
        down = tr.alloc(t * h * e)
        tr.free(act, attn)  # x rebound, then LlamaMLP returns; hidden_states rebound
        if s.mlp_keeps_gate_up:
            tr.free(gate_up)
        hidden = down
    tr.free(residual)  # the final norm works in place
    return hidden


def _opt_layers(tr: _Trace, s: V0ProfileShape) -> int:
    """OPTDecoder.forward; returns the final layer norm's output."""
    t, h, e = s.tokens, s.hidden, s.e
    inputs_embeds = tr.alloc(t * h * e)
    pos_embeds = tr.alloc(t * h * e)
    hidden = tr.alloc(t * h * e)
    for _ in range(s.layers):
        normed = tr.alloc(t * h * e)  # self_attn_layer_norm (do_layer_norm_before)
        attn = _attention(tr, s, s.q_width + 2 * s.kv_width)
        tr.free(normed)
        summed = tr.alloc(t * h * e)  # residual + hidden_states
        tr.free(attn)
        normed = tr.alloc(t * h * e)  # final_layer_norm
        fc1 = tr.alloc(t * s.intermediate * e)
        tr.free(normed)
        act = tr.alloc(t * s.intermediate * e)  # ReLU, not in place
        tr.free(fc1)
        fc2 = tr.alloc(t * h * e)
        tr.free(act)
        out = tr.alloc(t * h * e)  # residual + hidden_states
        tr.free(fc2, summed, hidden)  # layer returns; the decoder rebinds hidden_states
        hidden = out
    final = tr.alloc(t * h * e)  # decoder final_layer_norm
    tr.free(hidden, inputs_embeds, pos_embeds)
    return final


def _sampler(tr: _Trace, s: V0ProfileShape) -> None:
    """compute_logits and the sampler; the model's hidden states stay alive throughout."""
    rows, e = s.seqs, s.e
    entries = rows * s.vocab
    selected = tr.alloc(rows * s.hidden * e)
    if s.tp > 1:
        # tensor_model_parallel_gather (distributed/communication_op.py): each rank's [rows, padded / tp] shard,
        # gathered on the driver into a list of tp such tensors and concatenated.
        shard = tr.alloc(rows * (s.padded_vocab // s.tp) * e)
        gathered = [tr.alloc(rows * (s.padded_vocab // s.tp) * e) for _ in range(s.tp)]
        logits = tr.alloc(rows * s.padded_vocab * e)
        tr.free(*gathered, shard)
    else:
        logits = tr.alloc(rows * s.padded_vocab * e)
    tr.free(selected)
    width = e
    working = []
    if s.fp32_logits:
        working.append(tr.alloc(entries * FP32))
        width = FP32
    sorted_values = tr.alloc(entries * width)
    sorted_index = tr.alloc(entries * INT64)
    top_k_mask = tr.alloc(entries * BOOL)
    probs_sort = tr.alloc(entries * width)
    probs_sum = tr.alloc(entries * width)
    top_p_mask = tr.alloc(entries * BOOL)
    temps = [sorted_values, sorted_index, top_k_mask, probs_sort, probs_sum, top_p_mask]
    if s.scatter_values:
        reordered = tr.alloc(entries * width)
    else:
        temps.append(tr.alloc(s.vocab * INT64))  # src = torch.arange(vocab)
        temps.append(tr.alloc(entries * INT64))  # logits_idx_inv
        reordered = tr.alloc(entries * width)
    tr.free(*temps)
    probs = tr.alloc(entries * FP32)
    logprobs = tr.alloc(entries * FP32)
    chosen = tr.alloc(entries * FP32)  # probs[long_sample_indices]
    draw = tr.alloc(entries * FP32)  # _multinomial's exponential draw
    tr.free(draw, chosen, probs, logprobs, reordered, *working, logits)


def profile_events(s: V0ProfileShape) -> list[Event]:
    tr = _Trace()
    tr.events.append(("w", 1, CUBLAS_WORKSPACE_PRE_SM90))
    hidden = _llama_layers(tr, s) if s.module == "llama" else _opt_layers(tr, s)
    if s.last_stage:
        _sampler(tr, s)
    tr.free(hidden)
    return tr.events


@functools.lru_cache(maxsize=256)
def profile_reservation(s: V0ProfileShape) -> V0ProfileReservation:
    """The profile run's peak reservation (what ``init_free - free`` sees beyond the weights) and its peak of
    live tensors, replayed on a card with room to spare."""
    run = replay(profile_events(s))
    return V0ProfileReservation(peak_reserved=run.peak_reserved, peak_allocated=run.peak_allocated)


# Architectures whose vLLM V0 modules are written out above: llama.py serves Llama and Mistral, qwen2.py has
# the same layer structure (fused_add_rms_norm, MergedColumnParallelLinear gate_up, SiluAndMul) in 0.4.1.
_MODULES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "llama",
            "OPTForCausalLM": "opt"}
_LLAMA_PY = ("LlamaForCausalLM", "MistralForCausalLM")  # MistralForCausalLM is llama.py's LlamaForCausalLM


def profile_shape(spec: ModelSpec, layout: ParallelLayout, version: tuple[int, int, int], *, e: int, tokens: int,
                  seqs: int, layers: int, last_stage: bool) -> V0ProfileShape | None:
    """The profile run of ``spec`` under the V0 worker of ``version``; None for a model whose modules are not
    written here (its charge stays the allocated peak)."""
    architecture = next((a for a in spec.architectures if a in _MODULES), None)
    module = _MODULES.get(architecture or "")
    if module is None or spec.moe is not None or spec.mla is not None or spec.ffn_gated != (module == "llama"):
        return None
    tp = layout.tp
    return V0ProfileShape(
        module=module, layers=layers, hidden=spec.hidden_size, q_width=layout.heads_per_rank * spec.head_dim,
        kv_width=layout.kv_heads_per_rank * spec.head_dim, intermediate=-(-spec.intermediate_size // tp),
        vocab=spec.vocab_size, padded_vocab=layout.padded_vocab, tokens=tokens, seqs=min(seqs, tokens), e=e, tp=tp,
        last_stage=last_stage,
        # layers/sampler.py: the cast is in 0.6.0, 0.6.3, 0.6.5, 0.6.6 and 0.8.5, not in 0.5.4.
        fp32_logits=version >= (0, 6, 0),
        # One scatter_ of the values in 0.6.3, 0.6.5, 0.6.6 and 0.8.5; 0.6.0 gathers by the inverse permutation.
        scatter_values=version >= (0, 6, 3),
        # The backends copy the kernel's output into empty_like(query) from 0.4.1 (chunked prefill); 0.3.3's
        # layers/attention.py and 0.4.0's backends/xformers.py return it, as 0.6.3's unified_flash_attention does;
        # from 0.6.5 the FlashAttention kernel writes into the one empty_like(query) of attention/layer.py
        # (use_output; out= in backends/flash_attn.py, 0.6.5 and 0.6.6). 0.6.5's backends/xformers.py (GPUs before
        # sm80) still copies its output into an empty_like(query): not modelled.
        attention_buffer=(0, 4, 1) <= version < (0, 6, 3),
        # LlamaMLP.forward: "gate_up, _ = self.gate_up_proj(x); x = self.act_fn(gate_up)" in 0.4.1; "x, _ =
        # self.gate_up_proj(x); x = self.act_fn(x)" in llama.py of 0.6.5, 0.6.6 and 0.8.5 (the release between
        # that changed it is not read, so the reserved-peak era keeps the 0.4.1 form). Qwen2MLP (qwen2.py) keeps
        # the gate_up name in 0.6.5, 0.6.6 and 0.8.5.
        mlp_keeps_gate_up=not (architecture in _LLAMA_PY and version >= (0, 6, 5)))
