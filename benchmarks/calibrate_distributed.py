"""Measure training steps spread over several GPUs: PyTorch FSDP2 (fully_shard) and DistributedDataParallel.

Run under torchrun, one process per GPU; rank 0 appends one JSON line per case to ``--out`` with every rank's
figures (``per_rank``), flushed at once::

    torchrun --nproc_per_node 2 benchmarks/calibrate_distributed.py --out $OUT/distributed-h200.jsonl

The lines become ``tests/fixtures/measurements/distributed-h200.jsonl``, which gpuplan's ``--fsdp`` / DDP
estimates are checked against. Each case builds the model on the meta device, wraps it as the libraries'
own recipes do, materializes it on the GPU and runs two optimizer steps with gpuplan/verify/train_measure.py
(the second measured, phase by phase). ``--device cpu`` runs the harness on the CPU with gloo and tiny shapes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpuplan.verify import measure as m  # noqa: E402
from gpuplan.verify import train_measure as tm  # noqa: E402

# (model id, config file, wrapper, precision, batch, seq, checkpointing)
CASES = [
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "fsdp", "bf16", 4, 2048, False),
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "fsdp", "bf16", 4, 2048, True),
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "fsdp", "mixed", 4, 2048, True),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "fsdp", "bf16", 2, 512, False),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "fsdp", "mixed", 4, 2048, False),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "ddp", "bf16", 2, 512, False),
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "ddp", "bf16", 4, 2048, True),
]

# Measured after the FSDP2 / DDP accounting was set from the cases above: other models and shapes.
HELD_OUT = [
    ("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", "fsdp", "bf16", 4, 2048, False),
    ("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", "fsdp", "mixed", 2, 2048, True),
    ("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", "ddp", "mixed", 2, 1024, False),
]

# DeepSpeed ZeRO (carried to the machine as a wheel): stages 1-3 in bf16 with fp32 master weights.
ZERO_CASES = [
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "zero1", "bf16", 4, 2048, True),
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "zero2", "bf16", 4, 2048, True),
    ("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", "zero3", "bf16", 4, 2048, True),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "zero2", "bf16", 2, 512, False),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "zero3", "bf16", 2, 512, False),
]

# Measured after the ZeRO terms were set from ZERO_CASES: other models, shapes, and a model whose parameters
# exceed stage3_max_live_parameters. ZeRO-3 last: its engine is not entirely freed when a case ends.
ZERO_HELD_OUT = [
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "zero1", "bf16", 4, 1024, True),
    ("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", "zero2", "bf16", 2, 2048, True),
    ("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", "zero3", "bf16", 4, 2048, False),
    ("Qwen/Qwen2.5-7B", "Qwen--Qwen2.5-7B.json", "zero3", "bf16", 2, 2048, True),
]


def deepspeed_config(stage: int, batch: int) -> dict[str, Any]:
    """DeepSpeed's defaults but for what must be named: bf16 (fp32 master weights in the optimizer), the
    ZeRO stage, and torch's AdamW (torch_adam: no compiled op), as a Trainer run would configure it."""
    return {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": True}, "zero_optimization": {"stage": stage},
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def run_deepspeed_case(raw: dict[str, Any], stage: int, batch: int, seq: int, ckpt: bool) -> dict[str, Any]:
    """Two DeepSpeed steps (engine forward, engine.backward, engine.step), the second measured per phase."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    config, notes = m.load_config(raw)
    tm.clear("cuda")
    before = int(torch.cuda.memory_allocated())
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.train()
    tm.set_checkpointing(model, ckpt)
    parameters = sum(p.numel() for p in model.parameters())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=deepspeed_config(stage, batch))
    del model
    tm.clear("cuda")
    result: dict[str, Any] = {"config_notes": notes, "allocated_before_build": before,
                              "weights_allocated": int(torch.cuda.memory_allocated()), "parameters": parameters,
                              "deepspeed": deepspeed.__version__, "oom": False}
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    for step in range(2):
        tm.clear("cuda")
        phases: dict[str, Any] = {"allocated_start": int(torch.cuda.memory_allocated())}
        torch.cuda.reset_peak_memory_stats()
        loss = engine(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        phases["peak_forward"] = int(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        engine.backward(loss)
        torch.cuda.synchronize()
        phases["peak_backward"] = int(torch.cuda.max_memory_allocated())
        del loss
        torch.cuda.reset_peak_memory_stats()
        engine.step()
        torch.cuda.synchronize()
        phases["peak_step"] = int(torch.cuda.max_memory_allocated())
        phases["allocated_end"] = int(torch.cuda.memory_allocated())
        phases["peak_allocated"] = max(phases["peak_forward"], phases["peak_backward"], phases["peak_step"])
        result["step1" if step == 0 else "measured"] = phases
    result["peak_reserved"] = int(torch.cuda.max_memory_reserved())
    result.update({k: result["measured"][k] for k in ("peak_allocated", "peak_forward", "peak_backward",
                                                       "peak_step")})
    destroy = getattr(engine, "destroy", None)
    if callable(destroy):
        destroy()
    del engine, ids
    tm.clear("cuda")
    return result


def case_id(model_id: str, wrapper: str, precision: str, batch: int, seq: int, ckpt: bool, world: int) -> str:
    return f"{model_id}|full|{precision}|adamw|b{batch}|s{seq}|gc{int(ckpt)}|ga1|{wrapper}{world}"


def decoder_layers(model: Any) -> Any:
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return inner.layers


def build(raw: dict[str, Any], wrapper: str, precision: str, ckpt: bool, device: str, rank: int) -> tuple[Any, dict]:
    """The model as each library's recipe sets it up.

    FSDP2 (torch/distributed/fsdp/_fully_shard/_fully_shard.py; the TorchTitan / HF Accelerate recipe): built on
    the meta device, each decoder layer and then the root wrapped with fully_shard, materialized with
    to_empty. "mixed" keeps fp32 shards and computes in bf16 (MixedPrecisionPolicy(param_dtype=bf16,
    reduce_dtype=fp32)); "bf16" shards bf16 weights. DDP (torch/nn/parallel/distributed.py): the whole model
    on each GPU, gradients all-reduced through buckets (the default, gradient_as_bucket_view=False).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config, notes = m.load_config(raw)
    dtype = m.torch_dtype(tm.param_dtype(precision))
    before = int(torch.cuda.memory_allocated()) if device.startswith("cuda") else 0
    torch.manual_seed(0)
    if wrapper == "ddp":
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        model.train()
        tm.set_checkpointing(model, ckpt)
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[rank] if device.startswith("cuda") else None)
        initialized = True
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        model.train()
        tm.set_checkpointing(model, ckpt)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "mixed" else MixedPrecisionPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        model.to_empty(device=device)
        initialized = True
        try:
            m._clear_init_flags(model)
            model.initialize_weights()
        except Exception:  # memory does not depend on the values; recorded so that a NaN loss is explained
            initialized = False
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    tm.clear(device)
    info = {"config_notes": notes, "allocated_before_build": before, "weights_initialized": initialized,
            "weights_allocated": int(torch.cuda.memory_allocated()) if device.startswith("cuda") else None}
    info.update(tm.parameter_summary(model))
    return model, info


def measure_case(raw: dict[str, Any], wrapper: str, precision: str, batch: int, seq: int, ckpt: bool,
                 device: str, rank: int) -> dict[str, Any]:
    """One case on this rank: DeepSpeed's own loop for ZeRO, train_measure.run_train_case otherwise."""
    if wrapper.startswith("zero"):
        return run_deepspeed_case(raw, int(wrapper[-1]), batch, seq, ckpt)
    model, info = build(raw, wrapper, precision, ckpt, device, rank)
    # FSDP2's policy computes in bf16 itself; autocast is only for DDP's fp32 weights.
    run_precision = "bf16" if wrapper == "fsdp" and precision == "mixed" else precision
    result = tm.run_train_case(model, precision=run_precision, optimizer_name="adamw", batch=batch, seq=seq,
                               grad_checkpointing=ckpt, device=device)
    result["precision"] = precision
    return {**info, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--errors", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="one decoder layer and short sequences")
    parser.add_argument("--time-budget-s", type=float, default=240.0)
    parser.add_argument("--run-label", default="distributed")
    parser.add_argument("--cases", choices=("calibration", "held-out", "zero", "zero-held-out"),
                        default="calibration")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch
    import torch.distributed as dist

    cuda = args.device.startswith("cuda")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cuda:
        torch.cuda.set_device(rank)
    context = m.init_cuda(rank) if cuda else {}
    dist.init_process_group("nccl" if cuda else "gloo")
    versions = m.environment(rank) if cuda else {}
    started = time.perf_counter()
    out = open(args.out, "a", encoding="utf-8") if rank == 0 else None
    errors = open(args.errors or os.devnull, "a", encoding="utf-8")
    overrides = {"num_hidden_layers": 1} if args.tiny else {}
    cases = {"calibration": CASES, "held-out": HELD_OUT, "zero": ZERO_CASES,
             "zero-held-out": ZERO_HELD_OUT}[args.cases]
    for model_id, config_file, wrapper, precision, batch, seq, ckpt in cases:
        if time.perf_counter() - started > args.time_budget_s:
            break
        if args.tiny:
            batch, seq = 1, 32
        cid = case_id(model_id, wrapper, precision, batch, seq, ckpt, world)
        raw = json.loads((REPO / "data" / "models" / config_file).read_text())
        raw.update(overrides)
        try:
            row: dict[str, Any] = {"rank": rank, "context": context,
                   **measure_case(raw, wrapper, precision, batch, seq, ckpt, args.device, rank)}
        except Exception as error:
            row = {"rank": rank, "error": repr(error)[:500]}
            errors.write(json.dumps({"case_id": cid, "rank": rank, "error": repr(error)[:500],
                                     "traceback": traceback.format_exc()[-3000:]}) + "\n")
            errors.flush()
        tm.clear(args.device)
        rows: list[Any] = [None] * world
        dist.all_gather_object(rows, row)
        if out is not None:
            record = {"case_id": cid, "run": args.run_label, "model_id": model_id,
                      "config_file": f"data/models/{config_file}", "config_overrides": overrides,
                      "wrapper": wrapper, "gpus": world, "method": "full", "precision": precision,
                      "optimizer": "adamw", "batch": batch, "seq": seq, "grad_checkpointing": ckpt,
                      "grad_accumulation": 1, "lora_rank": None, "versions": versions, "per_rank": rows}
            out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
            peaks = [r.get("peak_allocated") for r in rows]
            print(f"{cid}: peaks {[round(p / 2**30, 2) if p else p for p in peaks]} GiB", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
