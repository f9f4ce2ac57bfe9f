"""Training runs under a range of caps, traced runs with and without a cap, and repeated smallest-GPU searches.

What wrote tests/fixtures/measurements/min-memory-capscan-h100.jsonl and traces/training/capscan/: whether the
runs the estimate put under their searched smallest GPU pass under caps below it, and the allocator's events of
those runs. Two steps, each in a process of its own (``diagnose`` ran first). Needs torch, transformers, peft and a
CUDA GPU:

    python3 benchmarks/scan_capped_training.py diagnose $OUT   # diag.jsonl and the traces
    python3 benchmarks/scan_capped_training.py scan $OUT       # scan.jsonl
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 2**30


def _work(mm, config: str, method: str, precision: str, batch: int, seq: int, checkpointing: bool):
    raw = json.loads((REPO / "data" / "models" / config).read_text())
    return mm.training_work(raw, method=method, precision=precision, optimizer="adamw", batch=batch, seq=seq,
                            grad_checkpointing=checkpointing)


def diagnose(out: Path) -> None:
    """Qwen2.5-0.5B LoRA at 4 x 1,024 tokens traced under 16.0 and 16.5 GiB caps and searched again; Llama-3.2-1B
    LoRA at 4 x 1,024 tokens traced uncapped and searched again; Qwen2.5-3B in mixed precision traced uncapped."""
    import sweep_min_memory as sw
    import torch

    from gpuplan.verify import min_memory as mm

    res = open(out / "diag.jsonl", "w")

    def traced(work, cap, name):
        mm.clear_cuda()
        torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=2_000_000)
        ok = mm.capped_run(work, cap)
        rec = sw.write_trace(out, name, "default")
        rec.update({"name": name, "cap": cap, "ok": ok, "peak_reserved": torch.cuda.max_memory_reserved()})
        sw.emit(res, rec)
        print(rec, flush=True)

    qwen = _work(mm, "Qwen--Qwen2.5-0.5B.json", "lora", "bf16", 4, 1024, False)
    traced(qwen, int(16.0 * GiB), "qwen05-b4-cap16.0")
    traced(qwen, int(16.5 * GiB), "qwen05-b4-cap16.5")
    record = mm.measure_min_memory(qwen)
    record["name"] = "qwen05-b4-search"
    sw.emit(res, record)
    llama = _work(mm, "meta-llama--Llama-3.2-1B.json", "lora", "bf16", 4, 1024, False)
    traced(llama, None, "llama1b-lora-b4-s1024-uncapped")
    record = mm.measure_min_memory(llama)
    record["name"] = "llama1b-search"
    sw.emit(res, record)
    traced(_work(mm, "Qwen--Qwen2.5-3B.json", "full", "mixed", 2, 1024, True), None,
           "qwen25-3b-mixed-b2-s1024-gc1-uncapped")


def scan(out: Path) -> None:
    """Each run once under each cap (GiB), in this order, in one process."""
    import sweep_min_memory as sw

    from gpuplan.verify import min_memory as mm

    res = open(out / "scan.jsonl", "w")
    for name, work, caps in (
        ("qwen05-lora-b4-s1024", _work(mm, "Qwen--Qwen2.5-0.5B.json", "lora", "bf16", 4, 1024, False),
         [15.75, 15.875, 16.0, 16.125, 16.25, 16.5, 16.75, 17.0, 16.0, 16.5]),
        ("llama1b-lora-b4-s1024", _work(mm, "meta-llama--Llama-3.2-1B.json", "lora", "bf16", 4, 1024, False),
         [18.0, 18.25, 18.5, 18.75, 19.0, 19.125, 18.25, 18.75]),
    ):
        for cap in caps:
            started = time.time()
            ok = mm.capped_run(work, int(cap * GiB))
            rec = {"name": name, "cap_gib": cap, "ok": ok, "seconds": round(time.time() - started, 1)}
            sw.emit(res, rec)
            print(rec, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    {"diagnose": diagnose, "scan": scan}[sys.argv[1]](Path(sys.argv[2]))
