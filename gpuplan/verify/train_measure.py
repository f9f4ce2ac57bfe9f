"""Measure the real GPU memory of one training step: forward with labels, backward, optimizer step.

Like ``measure.py`` this returns plain dicts of integers and floats, and imports torch, transformers and peft
inside the functions only. The model is built from its config with random weights directly on the GPU.

One *step* is what a training loop such as transformers' Trainer does per optimizer update::

    for each of grad_accumulation micro-batches:
        loss = model(input_ids=ids, labels=ids).loss      # the outputs (and their logits) are dropped here
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

The step is run twice and the second is measured: the first creates the optimizer states, which then stay
allocated. Each phase of the second step (forward, backward, optimizer step) gets its own peak, so that the
estimate can be checked term by term.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from gpuplan.verify import measure as m

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("bf16", "fp16", "fp32", "mixed")
OPTIMIZERS = ("adamw", "adamw-8bit", "adafactor", "sgd", "sgd-momentum")


def _torch() -> Any:
    import torch

    return torch


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _allocated(device: str) -> int | None:
    return int(_torch().cuda.memory_allocated()) if _cuda(device) else None


def _peak(device: str) -> int | None:
    return int(_torch().cuda.max_memory_allocated()) if _cuda(device) else None


def _peak_reserved(device: str) -> int | None:
    return int(_torch().cuda.max_memory_reserved()) if _cuda(device) else None


def _reset_peak(device: str) -> None:
    if _cuda(device):
        _torch().cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    if _cuda(device):
        _torch().cuda.synchronize()


def clear(device: str) -> None:
    gc.collect()
    if _cuda(device):
        torch = _torch()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def param_dtype(precision: str) -> str:
    """Storage dtype of the weights: ``mixed`` keeps fp32 master weights and computes under bf16 autocast."""
    return "fp32" if precision == "mixed" else precision


def build_train_model(config_dict: dict[str, Any], method: str, precision: str, *, lora_rank: int = 16,
                      lora_alpha: int | None = None, lora_targets: str | list[str] = "all-linear",
                      attn_implementation: str = "sdpa", device: str = "cuda",
                      seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build the model to train: all weights trainable (full), or frozen with LoRA adapters (peft).

    QLoRA loads the base through bitsandbytes (NF4, double quantization, bf16 compute), which needs real weights
    on disk or quantization on load; with random weights it quantizes the random base on the GPU.
    """
    torch = _torch()
    from transformers import AutoModelForCausalLM

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    config, notes = m.load_config(config_dict)
    clear(device)
    allocated_before = _allocated(device)
    torch.manual_seed(seed)
    started = time.perf_counter()
    dtype = m.torch_dtype(param_dtype(precision))
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if method == "qlora":
        if not has_bitsandbytes():
            raise RuntimeError("QLoRA needs bitsandbytes, which is not installed")
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = torch.bfloat16
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = _quantize_nf4(AutoModelForCausalLM.from_config(config, **kwargs), quant, device)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    # A training run keeps the config's dropout: from_config leaves the model in training mode already.
    model.train()
    info: dict[str, Any] = {"model_class": type(model).__name__, "model_type": getattr(config, "model_type", None),
                            "config_notes": notes, "allocated_before_build": allocated_before}
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(r=lora_rank, lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_rank,
                          lora_dropout=0.0, target_modules=lora_targets, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        info["peft_trainable"], info["peft_all"] = (int(x) for x in model.get_nb_trainable_parameters())
        import peft

        info["peft"] = peft.__version__
    _sync(device)
    info["build_seconds"] = round(time.perf_counter() - started, 3)
    clear(device)
    info["weights_allocated"] = _allocated(device)
    info.update(parameter_summary(model))
    info["attn_implementation"] = getattr(_base(model).config, "_attn_implementation", None)
    return model, info


def _quantize_nf4(model: Any, quant: Any, device: str) -> Any:  # pragma: no cover - needs bitsandbytes + CUDA
    """Swap the linears of a model built on the CPU for bitsandbytes Linear4bit (as from_pretrained does with
    a quantization_config), then move it: bitsandbytes quantizes each weight to NF4 as it reaches the GPU."""
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    model = replace_with_bnb_linear(model, quantization_config=quant)
    return model.to(device)


def _base(model: Any) -> Any:
    """The transformers model under a peft wrapper."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def parameter_summary(model: Any) -> dict[str, Any]:
    trainable = frozen = trainable_bytes = frozen_bytes = 0
    by_dtype: dict[str, int] = {}
    for param in model.parameters():
        size = int(param.numel() * param.element_size())
        key = str(param.dtype).replace("torch.", "")
        by_dtype[key] = by_dtype.get(key, 0) + size
        if param.requires_grad:
            trainable += int(param.numel())
            trainable_bytes += size
        else:
            frozen += int(param.numel())
            frozen_bytes += size
    return {"trainable_params": trainable, "frozen_params": frozen, "trainable_bytes": trainable_bytes,
            "frozen_bytes": frozen_bytes, "param_bytes": trainable_bytes + frozen_bytes,
            "param_bytes_by_dtype": by_dtype}


def make_optimizer(name: str, params: list[Any]) -> Any:
    """The optimizer as its library constructs it by default (torch picks foreach on CUDA)."""
    torch = _torch()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-5, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=None)
    if name == "adamw-8bit":
        import bitsandbytes as bnb  # pragma: no cover - optional

        return bnb.optim.AdamW8bit(params, lr=1e-5)
    raise ValueError(f"unknown optimizer {name!r}")


def _state_bytes(optimizer: Any) -> int:
    torch = _torch()
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                pointer = value.untyped_storage().data_ptr()
                if pointer not in seen:
                    seen.add(pointer)
                    total += int(value.untyped_storage().nbytes())
    return total


def _grad_bytes(model: Any) -> int:
    return sum(int(p.grad.numel() * p.grad.element_size()) for p in model.parameters() if p.grad is not None)


def set_checkpointing(model: Any, enabled: bool) -> None:
    base = _base(model)
    if enabled:
        # transformers' own default: non-reentrant torch.utils.checkpoint, and input embeddings that require
        # grad so that a frozen base (LoRA) still back-propagates into the first checkpointed layer.
        base.gradient_checkpointing_enable()
    elif getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    base.config.use_cache = False


def run_train_case(model: Any, *, precision: str, optimizer_name: str = "adamw", batch: int, seq: int,
                   grad_checkpointing: bool, grad_accumulation: int = 1, device: str = "cuda", seed: int = 0,
                   steps: int = 2) -> dict[str, Any]:
    """Run ``steps`` optimizer steps on random tokens and record the memory of the last one, phase by phase.

    All ``*allocated`` figures are absolute ``torch.cuda`` counters: they include the weights and whatever
    was allocated before the model was built. On a CPU device the run happens and the figures are None.
    """
    torch = _torch()
    oom_error = m._out_of_memory_error() if _cuda(device) else MemoryError
    set_checkpointing(model, grad_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(optimizer_name, params)
    vocab = int(_base(model).get_input_embeddings().weight.shape[0])
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), device=device, generator=generator)
    autocast = precision == "mixed"
    result: dict[str, Any] = {"batch": batch, "seq": seq, "grad_checkpointing": grad_checkpointing,
                              "grad_accumulation": grad_accumulation, "optimizer": optimizer_name,
                              "precision": precision, "oom": False}
    clear(device)
    result["allocated_before_steps"] = _allocated(device)
    started = time.perf_counter()
    try:
        for step in range(steps):
            last = step == steps - 1
            clear(device)
            phases: dict[str, Any] = {"allocated_start": _allocated(device)}
            _reset_peak(device)
            fwd_peak = bwd_peak = 0
            for micro in range(grad_accumulation):
                _reset_peak(device)
                with torch.autocast(device_type="cuda" if _cuda(device) else "cpu", dtype=torch.bfloat16,
                                    enabled=autocast):
                    loss = model(input_ids=ids, labels=ids).loss / grad_accumulation
                _sync(device)
                fwd_peak = max(fwd_peak, _peak(device) or 0)
                phases[f"allocated_after_forward_{micro}"] = _allocated(device)
                _reset_peak(device)
                loss.backward()
                _sync(device)
                bwd_peak = max(bwd_peak, _peak(device) or 0)
                phases[f"allocated_after_backward_{micro}"] = _allocated(device)
                del loss
            phases["grad_bytes"] = _grad_bytes(model)
            _reset_peak(device)
            optimizer.step()
            _sync(device)
            phases["peak_step"] = _peak(device)
            phases["allocated_after_step"] = _allocated(device)
            optimizer.zero_grad(set_to_none=True)
            phases["allocated_end"] = _allocated(device)
            phases["peak_forward"] = fwd_peak if _cuda(device) else None
            phases["peak_backward"] = bwd_peak if _cuda(device) else None
            if _cuda(device):
                phases["peak_allocated"] = max(fwd_peak, bwd_peak, phases["peak_step"])
            else:
                phases["peak_allocated"] = None
            phases["optimizer_state_bytes"] = _state_bytes(optimizer)
            result["step1" if step == 0 and not last else "measured"] = phases
        result["peak_reserved"] = _peak_reserved(device)
        measured = result["measured"]
        result.update({k: measured[k] for k in ("peak_allocated", "peak_forward", "peak_backward", "peak_step",
                                                "grad_bytes", "optimizer_state_bytes")})
    except oom_error as error:
        result.update({"oom": True, "oom_allocated": _allocated(device), "oom_max_allocated": _peak(device),
                       "oom_message": str(error).splitlines()[0][:300] if str(error) else type(error).__name__})
    result["seconds"] = round(time.perf_counter() - started, 3)
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()
    del optimizer, params, ids
    clear(device)
    result["allocated_after_case"] = _allocated(device)
    return result
