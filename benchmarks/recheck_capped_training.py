"""Run a training case once under a given cap, in a new process, and record the allocator's events.

What wrote tests/fixtures/measurements/min-memory-recheck-h100.jsonl: whether a run the smallest-GPU search
passed (or failed) passes again under the same cap in another process. Needs torch, transformers, peft and a
CUDA GPU:

    python3 benchmarks/recheck_capped_training.py   # writes $OUT/capped.jsonl and $OUT/tr/*.trace.gz
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# (config file, method, precision, batch, seq, checkpointing, caps in GiB)
CASES = [
    ("Qwen--Qwen3-0.6B.json", "lora", "bf16", 8, 1024, False, [36.25, 35.19]),
    ("Qwen--Qwen2.5-0.5B.json", "lora", "bf16", 8, 1024, False, [31.5]),
]
GiB = 2**30


def main() -> None:
    import torch

    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
    import sweep_min_memory as sw

    from gpuplan.verify import measure as m
    from gpuplan.verify import min_memory as mm

    out = Path(os.environ["OUT"])
    m.init_cuda()
    with open(out / "capped.jsonl", "w") as fh:
        for cfg, method, prec, b, s, gc, caps in CASES:
            raw = json.loads(Path("data/models", cfg).read_text())
            work = mm.training_work(raw, method=method, precision=prec, optimizer="adamw", batch=b, seq=s,
                                    grad_checkpointing=gc)
            for cap in caps:
                mm.clear_cuda()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python")
                ok = mm.capped_run(work, int(cap * GiB))
                stats = torch.cuda.memory_stats()
                case = f"{cfg[:-5]}-{method}-{prec}-b{b}-s{s}-gc{int(gc)}-cap{cap}"
                rec = {"case": case, "cap_gib": cap, "ok": ok, "retries": stats.get("num_alloc_retries"),
                       "ooms": stats.get("num_ooms"), "peak_reserved": torch.cuda.max_memory_reserved(),
                       "peak_allocated": torch.cuda.max_memory_allocated()}
                rec.update(sw.write_trace(out / "tr", case, "default"))
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(rec, flush=True)


if __name__ == "__main__":
    main()
