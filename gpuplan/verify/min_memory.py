"""The smallest GPU memory in which a workload runs, found by running it under ever tighter caps.

``torch.cuda.set_per_process_memory_fraction(cap / total)`` limits what PyTorch's caching allocator may reserve.
When a request would pass the cap, the allocator frees its cached blocks and retries (c10/cuda/
CUDACachingAllocator.cpp, ``malloc``: ``release_available_cached_blocks`` then ``release_cached_blocks``) before
raising ``torch.OutOfMemoryError``: what it does on a card that has only ``cap`` bytes for torch. A run under the
cap either completes or raises; the smallest cap that completes, plus the memory outside torch's allocator (the
CUDA context, lazily loaded kernels, library handles), is the smallest card that runs the workload.

The search itself (:func:`smallest_cap`) is pure: it calls ``runs(cap)`` and needs no GPU, so it is tested with
a fake allocator. :func:`measure_min_memory` drives it on the local GPU.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuplan.units import MiB

# Resolution of the search: the answer is at most one step above the true smallest cap. 64 MiB keeps a search
# over a 12 GiB gap between allocated and reserved memory to 8 runs.
SEARCH_STEP_BYTES = 64 * MiB


@dataclass
class CapSearch:
    """Result of a search: ``cap_bytes`` ran, ``cap_bytes - step_bytes`` did not (or cannot: it is below the
    peak allocation, which no allocator can serve in less)."""

    cap_bytes: int
    step_bytes: int
    attempts: list[tuple[int, bool]] = field(default_factory=list)


def smallest_cap(runs: Callable[[int], bool], known_fail: int, known_pass: int,
                 step: int = SEARCH_STEP_BYTES) -> CapSearch:
    """Binary search on multiples of ``step`` for the smallest cap at which ``runs(cap)`` is True.

    ``known_fail``: a cap known not to run (the peak allocation: the allocator reserves at least what it
    allocates); ``known_pass``: a cap known to run (the peak reserved memory of an unconstrained run). The
    search assumes that a run that completes under a cap also completes under any larger cap.
    """
    if step <= 0:
        raise ValueError("step must be positive")
    if known_pass <= known_fail:
        raise ValueError("known_pass must be larger than known_fail")
    low = known_fail // step  # low * step <= known_fail: fails
    if low * step == known_fail and known_fail > 0:
        # The peak allocation itself may be exactly enough: only caps below it are sure to fail.
        low -= 1
    high = -(-known_pass // step)  # high * step >= known_pass: runs
    attempts: list[tuple[int, bool]] = []
    while high - low > 1:
        middle = (low + high) // 2
        ok = runs(middle * step)
        attempts.append((middle * step, ok))
        if ok:
            high = middle
        else:
            low = middle
    return CapSearch(cap_bytes=high * step, step_bytes=step, attempts=attempts)


def _torch() -> Any:
    import torch

    return torch


def clear_cuda() -> None:
    torch = _torch()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def capped_run(work: Callable[[], None], cap_bytes: int | None) -> bool:
    """Run ``work`` with the caching allocator capped at ``cap_bytes`` (None: uncapped); False on OOM."""
    torch = _torch()
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    clear_cuda()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.set_per_process_memory_fraction(1.0 if cap_bytes is None else min(1.0, cap_bytes / total))
    try:
        work()
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        # The traceback of an OOM holds the frames of the failed run and their tensors: drop them first.
        gc.collect()
        torch.cuda.set_per_process_memory_fraction(1.0)


def outside_torch_bytes() -> int:
    """Device memory in use beyond what torch's allocator has reserved: context, kernels, library handles."""
    torch = _torch()
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def measure_min_memory(work: Callable[[], None], step: int = SEARCH_STEP_BYTES) -> dict[str, Any]:
    """One uncapped run of ``work`` (its peaks bound the search), then the search; plain numbers back."""
    torch = _torch()
    if not capped_run(work, None):
        return {"oom": True}
    peak_allocated = int(torch.cuda.max_memory_allocated())
    peak_reserved = int(torch.cuda.max_memory_reserved())
    outside = outside_torch_bytes()
    # Expandable segments can reserve exactly what they allocate: the known-good cap must lie above the bad one.
    search = smallest_cap(lambda cap: capped_run(work, cap), peak_allocated, max(peak_reserved, peak_allocated + 1),
                          step)
    clear_cuda()
    return {
        "oom": False,
        "peak_allocated": peak_allocated,
        "peak_reserved": peak_reserved,
        "outside_torch": outside,
        "min_cap": search.cap_bytes,
        "min_gpu_bytes": search.cap_bytes + outside,
        "search_step": search.step_bytes,
        "attempts": [[cap, ok] for cap, ok in search.attempts],
    }


# ---- the workloads searched: generate() and a training run ----------------------------------------------

def generate_work(model: Any, batch: int, prompt: int, new_tokens: int) -> Callable[[], None]:
    """One greedy generate() of exactly ``new_tokens`` after a random prompt (gpuplan/verify/measure.py), on a
    model already on the GPU: what runs under each cap."""
    torch = _torch()
    from gpuplan.verify import measure as m

    m._prepare_for_forced_length(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt), device="cuda", generator=generator)
    mask = torch.ones_like(ids)

    def work() -> None:
        output = m._generate(model, ids, mask, new_tokens)
        if output.sequences.shape[1] != prompt + new_tokens:
            raise RuntimeError("generate() stopped early")
        del output

    return work


def training_work(config: dict[str, Any], *, method: str, precision: str, optimizer: str, batch: int, seq: int,
                  grad_checkpointing: bool, lora_rank: int = 16, lora_targets: Any = "all-linear",
                  location: str | None = None, steps: int = 2) -> Callable[[], None]:
    """A whole training run from a fresh allocator: build (or load) the model, the optimizer, ``steps`` steps
    with labels (the loss computed inside the model, as transformers' Trainer does), all freed at the end."""
    torch = _torch()
    from gpuplan.verify import train_measure as tm

    def work() -> None:
        release_cublas_workspaces()
        model, _ = tm.build_train_model(config, method, precision, lora_rank=lora_rank, lora_targets=lora_targets,
                                        location=location)
        tm.set_checkpointing(model, grad_checkpointing)
        opt = tm.make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad])
        vocab = int(tm._base(model).get_input_embeddings().weight.shape[0])
        generator = torch.Generator(device="cuda").manual_seed(0)
        ids = torch.randint(0, vocab, (batch, seq), device="cuda", generator=generator)
        for _ in range(steps):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=precision == "mixed"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            del loss
            opt.step()
            opt.zero_grad(set_to_none=True)
        opt.state.clear()
        del opt, model, ids
        release_cublas_workspaces()

    return work


def release_cublas_workspaces() -> None:
    """Free the cuBLAS workspaces torch keeps for each (handle, stream) it has used (one per thread: the main
    thread's and autograd's device thread's; aten/src/ATen/cuda/CublasHandlePool.cpp ``clearCublasWorkspaces``),
    and the cache, so that a run starts as in a fresh process: each thread allocates its workspace again at its
    first matmul, wherever the allocator then finds room. Without this, the workspace autograd's thread allocated
    in an earlier run stays where it landed (in one measured run, inside a freed 4.6 GiB logits segment, which
    no capped run could then release) and every later run starts from that state."""
    torch = _torch()
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()


def _search_record(search: dict[str, Any], estimate: Any, case: dict[str, Any]) -> dict[str, Any]:
    """The search beside the estimate: what `gpuplan verify --min-memory` prints or writes as JSON."""
    record = {**case, **search, "estimate_total_bytes": estimate.total_bytes,
              "estimate_peak_allocated_bytes": estimate.peak_allocated_bytes}
    if not search.get("oom"):
        measured = search["min_gpu_bytes"]
        record["error"] = (estimate.total_bytes - measured) / measured
    return record


def verify_min_memory(resolved: Any, estimate: Any, *, random_weights: bool,
                      progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """``gpuplan verify --min-memory``: build or load the model, then search for the smallest GPU memory in
    which generate() of the estimate's workload completes, with the allocator this process runs."""
    import os

    from gpuplan.verify import measure as m
    from gpuplan.verify import runner

    runner.check_environment()
    progress("starting CUDA")
    m.init_cuda()
    config = runner.raw_config(resolved)
    model, _ = runner._load(m, resolved, config, estimate, random_weights, progress)
    progress(f"searching the smallest memory for generate(): batch {estimate.batch}, {estimate.prompt_tokens} "
             f"prompt + {estimate.new_tokens} new tokens")
    work = generate_work(model, estimate.batch, estimate.prompt_tokens, max(1, estimate.new_tokens))
    search = measure_min_memory(work)
    del work, model
    clear_cuda()
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    case = {"case_id": f"{resolved.id}|{estimate.compute_dtype}|{estimate.attn_implementation}|b{estimate.batch}|"
                       f"p{estimate.prompt_tokens}|n{estimate.new_tokens}",
            "kind": "generate", "gpu_name": m.environment().get("gpu_name"),
            "allocator": "expandable" if "expandable_segments:true" in alloc_conf.lower() else "default"}
    return _search_record(search, estimate, case)


def verify_min_memory_train(resolved: Any, estimate: Any, *, random_weights: bool,
                            progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """``gpuplan verify --train --min-memory``: the same search over a whole training run (build, optimizer,
    two steps), each attempt from a fresh start."""
    import os

    from gpuplan.errors import InputError
    from gpuplan.verify import measure as m
    from gpuplan.verify import runner

    runner.check_environment()
    if estimate.gpus != 1 or estimate.zero or estimate.fsdp or estimate.method == "qlora":
        raise InputError("gpuplan verify --train --min-memory searches full or LoRA training on one GPU",
                         hint="drop --zero, --fsdp, --gpus and --method qlora")
    progress("starting CUDA")
    m.init_cuda()
    config = runner.raw_config(resolved)
    location = None if random_weights else runner._require_weights(resolved)
    work = training_work(config, method=estimate.method, precision=estimate.precision,
                         optimizer=estimate.optimizer, batch=estimate.batch, seq=estimate.seq,
                         grad_checkpointing=estimate.grad_checkpointing, lora_rank=estimate.lora_rank or 16,
                         lora_targets=estimate.lora_targets or "all-linear", location=location)
    progress(f"searching the smallest memory for two training steps: batch {estimate.batch} x {estimate.seq}")
    search = measure_min_memory(work)
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    case = {"case_id": f"{resolved.id}|{estimate.method}|{estimate.precision}|{estimate.optimizer}|"
                       f"b{estimate.batch}|s{estimate.seq}|gc{int(estimate.grad_checkpointing)}",
            "kind": "train", "gpu_name": m.environment().get("gpu_name"),
            "allocator": "expandable" if "expandable_segments:true" in alloc_conf.lower() else "default"}
    return _search_record(search, estimate, case)


# ---- replaying recorded searches (tests/fixtures/measurements/min-memory-*.jsonl) ------------------------

def estimate_for_row(row: dict[str, Any]) -> Any:
    """gpuplan's estimate (generate) or TrainResult (training) for a case benchmarks/sweep_min_memory.py
    measured, with the allocator setting it ran under."""
    if row["kind"] == "train":
        from gpuplan.verify.train_measure import estimate_for_row as train_estimate

        return train_estimate(row)
    from gpuplan.api import estimate
    from gpuplan.models.sources import parse_config
    from gpuplan.verify.compare import measured_config, measured_release

    spec = parse_config(measured_config(row), label=row["model_id"])
    return estimate(spec, dtype=row["dtype"], batch=row["batch"], seq=row["prompt_tokens"] + row["new_tokens"],
                    new_tokens=row["new_tokens"], attn=row["attn"],
                    expandable_segments=row["allocator"] == "expandable", engine_version=measured_release(row))


def compare_min_memory(row: dict[str, Any], estimate: Any | None = None) -> dict[str, Any]:
    """total_bytes against the smallest GPU memory the search found (cap + memory outside torch)."""
    est = estimate if estimate is not None else estimate_for_row(row)
    measured = row["min_gpu_bytes"]
    return {"case_id": row["case_id"], "kind": row["kind"], "allocator": row["allocator"], "split": row["split"],
            "estimated_bytes": est.total_bytes, "measured_bytes": measured,
            "error": (est.total_bytes - measured) / measured,
            "peak_error": (est.peak_allocated_bytes - row["peak_allocated"]) / row["peak_allocated"],
            "peak_reserved_bytes": row["peak_reserved"], "peak_allocated_bytes": row["peak_allocated"]}


def measured_rows(path: Any) -> list[dict[str, Any]]:
    """The searched cases of a fixture (its environment lines and skipped cases left out)."""
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") in ("generate", "train") and "min_gpu_bytes" in r]


def trace_events(path: Any, allocated_before: int = 0) -> list[tuple[str, int, int]]:
    """A trace written by benchmarks/sweep_min_memory.py (``action address size`` per line, gzipped) as the
    event sequence of gpuplan/calc/allocator.py: allocations and frees by tensor, ``torch.cuda.empty_cache()``
    where the allocator released segments. ``allocated_before``: bytes allocated before recording started."""
    import gzip

    events: list[tuple[str, int, int]] = [("a", 0, allocated_before)] if allocated_before else []
    live: dict[int, int] = {}
    previous = ""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            action, address, size = line.split()
            if action == "a":
                live[int(address)] = len(events) + 1
                events.append(("a", len(events) + 1, int(size)))
            elif action == "f" and int(address) in live:
                events.append(("f", live.pop(int(address)), 0))
            elif action in ("s", "m") and previous not in ("s", "m"):
                events.append(("e", 0, 0))
            previous = action
    return events
