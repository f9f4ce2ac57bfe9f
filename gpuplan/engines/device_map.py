"""How transformers spreads a model over several GPUs with ``device_map="auto"`` (no tensor parallelism).

Whole modules go to GPUs in order, as transformers' ``get_balanced_memory`` and accelerate's
``infer_auto_device_map`` place them (transformers/integrations/accelerate.py):

* each GPU but the last may hold ``total // n + 1.25 x the largest decoder layer`` (the last takes the rest);
* modules are placed in model order: the embedding (with a tied lm_head, which must share its device),
  decoder layer 0 .. L-1, the final norm, then an untied lm_head; a module that does not fit moves on to the
  next GPU, never split (decoder layers are ``_no_split_modules``);
* on the first GPU, room for the largest remaining module is kept free (accelerate reserves it on the "main
  device" in case a layer is offloaded).

This is the split before any input exists; ``gpuplan/engines/transformers.py`` then counts each GPU's KV
cache and activations for the layers it holds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from gpuplan.calc.precision import Precision
from gpuplan.calc.weights import tensor_bytes
from gpuplan.errors import InputError
from gpuplan.models.spec import ModelSpec, TensorGroup, TensorRole

# transformers/integrations/accelerate.py get_balanced_memory: buffer = int(1.25 * max(no-split block, mean leaf))
BALANCE_BUFFER_FACTOR = 1.25


class GpuShare(BaseModel):
    """What one GPU holds under the split."""

    model_config = ConfigDict(frozen=True)

    index: int
    first_layer: int
    layers: int
    weights_bytes: int
    holds_embedding: bool
    holds_lm_head: bool


def _is_layer_tensor(t: TensorGroup) -> bool:
    return t.name.startswith(("layers.", "h."))


def layer_tensors(spec: ModelSpec, index: int) -> list[TensorGroup]:
    """The tensors of decoder layer ``index`` (dense and MoE layers differ in DeepSeek-style models)."""
    from gpuplan.engines.tp import layer_share

    out = []
    for t in spec.tensors:
        if t.loaded and _is_layer_tensor(t):
            count = layer_share(t, spec, range(index, index + 1))
            if count:
                out.append(t.model_copy(update={"count": count}))
    return out


def balanced_split(spec: ModelSpec, precision: Precision, gpus: int, capacity_bytes: int | None = None
                   ) -> list[GpuShare]:
    """Place the model on ``gpus`` GPUs like ``device_map="auto"``; ``capacity_bytes`` caps each GPU."""
    if gpus < 1:
        raise InputError(f"the number of GPUs must be at least 1, got {gpus}")
    loaded = [t for t in spec.tensors if t.loaded]
    layer_sizes = [sum(tensor_bytes(t, precision) for t in layer_tensors(spec, i))
                   for i in range(spec.num_hidden_layers)]
    head = sum(tensor_bytes(t, precision) for t in loaded if t.role is TensorRole.LM_HEAD)
    first = sum(tensor_bytes(t, precision) for t in loaded
                if not _is_layer_tensor(t) and t.role in (TensorRole.EMBEDDING, TensorRole.POSITION_EMBEDDING)
                or t.name == "vision_tower")
    rest = sum(tensor_bytes(t, precision) for t in loaded if not _is_layer_tensor(t)) - first - head
    # Model order; a tied lm_head has no tensor of its own and sits with the embedding.
    modules: list[tuple[str, int]] = [("embedding", first)]
    modules += [(f"layer {i}", size) for i, size in enumerate(layer_sizes)]
    modules += [("norm", rest), ("lm_head", head)]
    total = sum(size for _, size in modules)
    unlimited = capacity_bytes if capacity_bytes is not None else total * 2
    per_gpu = total // gpus + int(BALANCE_BUFFER_FACTOR * max(layer_sizes))
    budgets = [min(per_gpu, unlimited)] * (gpus - 1) + [unlimited]

    placement: list[int] = []
    used = [0] * gpus
    device = 0
    for position, (_name, size) in enumerate(modules):
        while True:
            budget = budgets[device]
            if device == 0 and gpus > 1:
                budget -= max(s for _, s in modules[position:])  # accelerate's main-device reserve
            if used[device] + size <= budget or device == gpus - 1:
                used[device] += size
                placement.append(device)
                break
            device += 1
    if capacity_bytes is not None and used[-1] > capacity_bytes:
        raise InputError(f"the weights do not fit {gpus} GPU(s) of {capacity_bytes / 2**30:,.1f} GiB",
                         hint="use more GPUs, a smaller --dtype, or a serving engine with tensor parallelism")
    shares = []
    for gpu in range(gpus):
        layers = [i for i in range(spec.num_hidden_layers) if placement[1 + i] == gpu]
        shares.append(GpuShare(
            index=gpu, first_layer=layers[0] if layers else 0, layers=len(layers), weights_bytes=used[gpu],
            holds_embedding=placement[0] == gpu, holds_lm_head=placement[-1] == gpu,
        ))
    return shares


def share_spec(spec: ModelSpec, share: GpuShare) -> ModelSpec:
    """A ModelSpec of the decoder layers one GPU holds (its windows, tensors and layer count)."""
    layers = range(share.first_layer, share.first_layer + share.layers)
    tensors = tuple(t for i in layers for t in layer_tensors(spec, i))
    return spec.model_copy(update={
        "tensors": tensors,
        "num_hidden_layers": max(1, share.layers),
        "layer_windows": tuple(spec.layer_windows[i] for i in layers),
        "layer_caches": tuple(spec.layer_caches[i] for i in layers) if spec.layer_caches else (),
    })
