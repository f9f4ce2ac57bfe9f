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
                      attn_implementation: str = "sdpa", device: str = "cuda", seed: int = 0,
                      location: str | None = None, kbit_prep: bool = False) -> tuple[Any, dict[str, Any]]:
    """Build the model to train: all weights trainable (full), or frozen with LoRA adapters (peft).

    With ``location`` the real weights are loaded from that folder or the Hugging Face cache (never the
    network); without, random weights of the same shapes are built on the device. QLoRA loads the base through
    bitsandbytes (NF4, double quantization, bf16 compute); ``kbit_prep`` then runs peft's
    prepare_model_for_kbit_training first (as the QLoRA scripts and TRL do), which casts every 16-bit weight
    that is not NF4 (embeddings, norms, lm_head) to float32.
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

        compute = torch.float16 if precision == "fp16" else torch.bfloat16
        kwargs["dtype"] = compute
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute)
        if location is not None:
            model = AutoModelForCausalLM.from_pretrained(location, quantization_config=quant, device_map=device,
                                                         local_files_only=True, **kwargs)
        else:
            model = _quantize_nf4(_build_16bit(AutoModelForCausalLM, config, kwargs, device), quant, device)
    elif location is not None:
        model = AutoModelForCausalLM.from_pretrained(location, device_map=device, local_files_only=True, **kwargs)
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
        if kbit_prep and method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            info["kbit_prep"] = True
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


def _build_16bit(factory: Any, config: Any, kwargs: dict[str, Any], device: str) -> Any:
    """The 16-bit model QLoRA quantizes: built on the device (fast random init), or on the CPU when the
    16-bit weights do not fit there (they are quantized on their way to the device)."""
    torch = _torch()
    out_of_memory = m._out_of_memory_error() if _cuda(device) else MemoryError
    try:
        with torch.device(device):
            return factory.from_config(config, **kwargs)
    except out_of_memory:
        clear(device)
        return factory.from_config(config, **kwargs)


def _quantize_nf4(model: Any, quant: Any, device: str) -> Any:  # pragma: no cover - needs bitsandbytes + CUDA
    """Swap the linears of a model built on the CPU for bitsandbytes Linear4bit holding the same values, as
    from_pretrained does with a quantization_config, then move it: bitsandbytes quantizes each weight to NF4
    as it reaches the GPU (bitsandbytes/nn/modules.py Params4bit.to -> _quantize). The output embedding is
    kept in the compute dtype, as transformers' get_keys_to_not_convert keeps lm_head
    (integrations/bitsandbytes.py)."""
    import bitsandbytes as bnb
    import torch

    keep = {id(model.get_output_embeddings())}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or id(child) in keep:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                      quant.bnb_4bit_compute_dtype,
                                      compress_statistics=quant.bnb_4bit_use_double_quant,
                                      quant_type=quant.bnb_4bit_quant_type,
                                      quant_storage=quant.bnb_4bit_quant_storage, device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             compress_statistics=quant.bnb_4bit_use_double_quant,
                                             quant_type=quant.bnb_4bit_quant_type,
                                             quant_storage=quant.bnb_4bit_quant_storage)
            if child.bias is not None:
                layer.bias = child.bias
            setattr(parent, name, layer)
    return model.to(device)


def _local(tensor: Any) -> Any:
    """A DTensor's shard on this rank (FSDP2 parameters, gradients and optimizer states); a tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _base(model: Any) -> Any:
    """The transformers model under a peft or DistributedDataParallel wrapper."""
    if type(model).__name__ == "DistributedDataParallel":
        model = model.module
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def parameter_summary(model: Any) -> dict[str, Any]:
    trainable = frozen = trainable_bytes = frozen_bytes = 0
    by_dtype: dict[str, int] = {}
    for param in model.parameters():
        param = _local(param)
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


def _state_bytes(optimizer: Any, device: str) -> int:
    """Bytes of the optimizer's state tensors on the training device (each storage once)."""
    torch = _torch()
    kind = torch.device(device).type
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            # AdamW's step counters are CPU scalars on a CUDA run; on a CPU run they are counted too.
            value = _local(value) if isinstance(value, torch.Tensor) else value
            if isinstance(value, torch.Tensor) and value.device.type == kind and (kind != "cpu" or value.dim()):
                pointer = value.untyped_storage().data_ptr()
                if pointer not in seen:
                    seen.add(pointer)
                    total += int(value.untyped_storage().nbytes())
    return total


def _grad_bytes(model: Any) -> int:
    return sum(int(_local(p.grad).numel() * p.grad.element_size()) for p in model.parameters()
               if p.grad is not None)


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
            phases["optimizer_state_bytes"] = _state_bytes(optimizer, device)
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


# ---- gpuplan verify --train ------------------------------------------------------------------------

def _rebase(row: dict[str, Any]) -> int:
    """What a measured row's counters hold beyond a fresh process's: whatever earlier cases left allocated.

    A fresh process has one cuBLAS workspace before the model is built and gets the backward thread's during
    the first step; a process that trained before already holds that second one."""
    workspace = (row.get("context") or {}).get("allocated_after_warmup", 0)
    leftover = row["allocated_before_build"] - workspace
    return leftover - workspace if workspace and leftover >= workspace else leftover


def compare_training(row: dict[str, Any], estimate: dict[str, Any]) -> dict[str, Any]:
    """Estimate (a TrainResult as a dict) against one measured step (a row as run_train_case records it, with
    the build's and init_cuda's figures). Pure: no torch.

    Measured figures are taken relative to the process's state before the model was built, plus the cuBLAS
    workspace every process allocates on its first matmul, so that they compare with a fresh process.
    """
    common = {"case_id": row.get("case_id"), "estimate": estimate, "oom": bool(row.get("oom"))}
    if row.get("oom"):
        return {**common, "error": 0.0, "components": [], "oom_phase": row.get("oom_phase"),
                "oom_allocated_bytes": row.get("oom_max_allocated") or row.get("oom_allocated")}
    before = row["allocated_before_build"]
    rebase = _rebase(row)
    measured = row.get("measured", row)
    slack = estimate.get("components", {}).get("allocator_slack", 0)
    rows = [
        ("weights", estimate["weights_bytes"], row["weights_allocated"] - before),
        ("gradients", estimate["gradient_bytes"], row["grad_bytes"]),
        ("optimizer states", estimate["optimizer_bytes"], row["optimizer_state_bytes"]),
        ("forward peak", estimate["forward_peak_bytes"], measured["peak_forward"] - rebase),
        ("backward peak", estimate["backward_peak_bytes"], measured["peak_backward"] - rebase),
        ("optimizer step peak", estimate["step_peak_bytes"], measured["peak_step"] - rebase),
        ("peak allocated (torch)", estimate["peak_allocated_bytes"], row["peak_allocated"] - rebase),
        ("peak reserved (allocator)", estimate["peak_allocated_bytes"] + slack, row["peak_reserved"] - rebase),
    ]
    components = [{"component": name, "estimated_bytes": int(est), "measured_bytes": int(meas)}
                  for name, est, meas in rows]
    peak_measured = row["peak_allocated"] - rebase
    error = (estimate["peak_allocated_bytes"] - peak_measured) / peak_measured if peak_measured else 0.0
    return {**common, "error": error, "components": components}


def measure_training(resolved: Any, estimate: Any, *, random_weights: bool,
                     progress: Any = lambda message: None) -> dict[str, Any]:
    """Build or load the model, run two training steps as ``estimate`` (a TrainResult) describes, compare."""
    import importlib.util

    from gpuplan.errors import InputError, MissingDependencyError, ModelNotFoundError
    from gpuplan.verify import runner

    runner.check_environment()
    if estimate.gpus != 1 or estimate.zero or estimate.fsdp:
        raise InputError("gpuplan verify --train measures one GPU", hint="drop --zero, --fsdp and --gpus")
    if estimate.method != "full" and importlib.util.find_spec("peft") is None:
        raise MissingDependencyError("LoRA needs peft", hint="pip install peft")
    if estimate.method == "qlora" and not has_bitsandbytes():
        raise MissingDependencyError("QLoRA needs bitsandbytes", hint="pip install bitsandbytes")
    if estimate.optimizer == "adamw-8bit" and not has_bitsandbytes():
        raise MissingDependencyError("the 8-bit AdamW is bitsandbytes'", hint="pip install bitsandbytes")
    torch = _torch()
    progress("starting CUDA")
    context = m.init_cuda()
    versions = m.environment()
    config = runner.raw_config(resolved)
    location = None
    if not random_weights:
        location = runner._weights_location(resolved)
        if location is None:
            raise ModelNotFoundError(
                f"the weights of {resolved.id} are not on disk or in the Hugging Face cache",
                hint="pass --random-weights to measure with random weights of the same shapes (the memory is "
                     "the same), or download the model first")
    targets: Any = estimate.lora_targets or "all-linear"
    progress("building the model" + (" with random weights" if random_weights else f" from {location}"))
    case_id = (f"{resolved.id}|{estimate.method}|{estimate.precision}|{estimate.optimizer}|b{estimate.batch}|"
               f"s{estimate.seq}|gc{int(estimate.grad_checkpointing)}|ga{estimate.grad_accumulation}"
               + ("|kbit" if estimate.prepare_kbit else ""))
    try:
        model, info = build_train_model(config, estimate.method, estimate.precision,
                                        lora_rank=estimate.lora_rank or 16, lora_targets=targets,
                                        location=location, kbit_prep=estimate.prepare_kbit)
    except torch.OutOfMemoryError:
        row = {"case_id": case_id, "oom": True, "oom_phase": "loading the weights",
               "oom_max_allocated": int(torch.cuda.max_memory_allocated())}
        return compare_training(row, estimate.model_dump())
    progress(f"running two training steps: micro-batch {estimate.batch} x {estimate.seq} tokens")
    result = run_train_case(model, precision=estimate.precision, optimizer_name=estimate.optimizer,
                            batch=estimate.batch, seq=estimate.seq, grad_checkpointing=estimate.grad_checkpointing,
                            grad_accumulation=estimate.grad_accumulation)
    del model
    clear("cuda")
    row = {"case_id": case_id, "context": context, "versions": versions, **info, **result}
    return compare_training(row, estimate.model_dump())


def estimate_for_row(row: dict[str, Any]) -> Any:
    """gpuplan's TrainResult for the case a recorded row measured (tests and the accuracy report replay
    tests/fixtures/measurements/training-h200.jsonl through it)."""
    from gpuplan.api import train
    from gpuplan.models.sources import parse_config
    from gpuplan.verify.compare import measured_config

    spec = parse_config(measured_config(row), label=row["model_id"])
    lora = row["method"] != "full"
    return train(spec, method=row["method"], precision=row["precision"], optimizer=row["optimizer"],
                 lora_rank=row["lora_rank"] if lora else None, grad_checkpointing=row["grad_checkpointing"],
                 batch=row["batch"], seq=row["seq"], grad_accumulation=row["grad_accumulation"],
                 prepare_kbit=bool(row.get("kbit_prep")))


def replay(row: dict[str, Any]) -> dict[str, Any]:
    """One recorded row against the current estimate."""
    return compare_training(row, estimate_for_row(row).model_dump())


def estimate_for_distributed_row(row: dict[str, Any]) -> Any:
    """gpuplan's TrainResult for a case benchmarks/calibrate_distributed.py measured (FSDP2 or DDP)."""
    from gpuplan.api import train
    from gpuplan.models.sources import parse_config
    from gpuplan.verify.compare import measured_config

    spec = parse_config(measured_config(row), label=row["model_id"])
    zero = int(row["wrapper"][-1]) if row["wrapper"].startswith("zero") else 0
    return train(spec, method=row["method"], precision=row["precision"], optimizer=row["optimizer"],
                 grad_checkpointing=row["grad_checkpointing"], batch=row["batch"], seq=row["seq"],
                 grad_accumulation=row["grad_accumulation"], fsdp=row["wrapper"] == "fsdp", zero=zero,
                 gpus=row["gpus"])


def replay_distributed(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each rank of a recorded FSDP2 / DDP case against the current estimate (one GPU's share).

    The weights are compared with the parameter bytes the rank holds (its FSDP shards, or DDP's full copy):
    the allocation around the wrap also holds DDP's gradient buckets, which the estimate counts apart."""
    estimate = estimate_for_distributed_row(row).model_dump()
    if row["wrapper"].startswith("zero"):
        return [_compare_zero_rank(rank, estimate, f"{row['case_id']}|rank{rank['rank']}")
                for rank in row["per_rank"]]
    out = []
    for rank in row["per_rank"]:
        compared = compare_training({**rank, "case_id": f"{row['case_id']}|rank{rank['rank']}"}, estimate)
        for component in compared["components"]:
            if component["component"] == "weights":
                component["measured_bytes"] = rank["param_bytes"]
        out.append(compared)
    return out


def _compare_zero_rank(rank: dict[str, Any], estimate: dict[str, Any], case_id: str) -> dict[str, Any]:
    """A DeepSpeed ZeRO rank: DeepSpeed keeps gradients and optimizer states in its own flat buffers, so
    only the phases' peaks are compared."""
    rebase = _rebase(rank)
    measured = rank["measured"]
    rows = [("forward peak", estimate["forward_peak_bytes"], measured["peak_forward"] - rebase),
            ("backward peak", estimate["backward_peak_bytes"], measured["peak_backward"] - rebase),
            ("optimizer step peak", estimate["step_peak_bytes"], measured["peak_step"] - rebase),
            ("peak allocated (torch)", estimate["peak_allocated_bytes"], measured["peak_allocated"] - rebase)]
    peak = measured["peak_allocated"] - rebase
    return {"case_id": case_id, "estimate": estimate, "oom": False,
            "error": (estimate["peak_allocated_bytes"] - peak) / peak,
            "components": [{"component": n, "estimated_bytes": int(e), "measured_bytes": int(v)} for n, e, v in rows]}
