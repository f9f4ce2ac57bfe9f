"""Measure the peak GPU memory of training steps over a matrix of models, methods, precisions and shapes.

Each case appends one JSON line to ``--out`` (flushed at once, so a run cut short keeps what it measured). The
lines become ``tests/fixtures/measurements/training-h200.jsonl``, which gpuplan's training estimate is checked
against (tests/test_training.py, docs/accuracy.md).

    python3 benchmarks/calibrate_training.py --out $OUT/training-h200.jsonl --time-budget-s 300

Needs torch, transformers, peft and a CUDA GPU (``--device cpu`` runs the same code with tiny shapes and
records no memory, to check the harness). It imports gpuplan/verify/measure.py and train_measure.py only,
which need none of gpuplan's own dependencies.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpuplan.verify import measure as m  # noqa: E402
from gpuplan.verify import train_measure as tm  # noqa: E402

SHAPES = [(2, 512), (4, 2048)]
# (method, precision): full fine-tuning in bf16 and in mixed precision (fp32 master weights, bf16 autocast),
# LoRA on a bf16 base.
METHODS = [("full", "bf16"), ("lora", "bf16"), ("full", "mixed")]


@dataclass
class Group:
    model_id: str
    config_file: str
    max_seq: int
    # (method, precision) built with the default AdamW, or (method, precision, optimizer, kbit_prep).
    methods: list[tuple[Any, ...]] = field(default_factory=lambda: list(METHODS))
    # (optimizer, batch, seq, checkpointing, accumulation) cases run once on the first build.
    extras: list[tuple[str, int, int, bool, int]] = field(default_factory=list)
    # Replaces the shapes x checkpointing grid when set: (batch, seq, checkpointing).
    grid: list[tuple[int, int, bool]] | None = None


# Cheapest first: small weights and vocabularies before large ones.
MATRIX = [
    Group("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", 2048),
    Group("openai-community/gpt2-medium", "openai-community--gpt2-medium.json", 1024),
    Group("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", 2048,
          extras=[("sgd", 2, 512, False, 1), ("sgd-momentum", 2, 512, False, 1), ("adafactor", 2, 512, False, 1),
                  ("adamw", 2, 512, False, 2)]),
    Group("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", 2048),
    Group("facebook/opt-1.3b", "facebook--opt-1.3b.json", 2048),
    Group("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", 2048),
]


# bitsandbytes: QLoRA (NF4 base, LoRA adapters) and the 8-bit AdamW, on four architectures; one QLoRA build
# prepared as the QLoRA scripts and TRL prepare it (peft prepare_model_for_kbit_training); one 7B QLoRA run
# at the shape users size for.
BNB_MATRIX = [
    Group("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", 2048,
          methods=[("qlora", "bf16"), ("full", "bf16", "adamw-8bit", False)]),
    Group("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", 2048,
          methods=[("qlora", "bf16"), ("qlora", "bf16", "adamw", True), ("lora", "bf16", "adamw-8bit", False),
                   ("full", "bf16", "adamw-8bit", False)]),
    Group("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", 2048,
          methods=[("qlora", "bf16"), ("qlora", "bf16", "adamw", True)]),
    Group("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", 2048,
          methods=[("qlora", "bf16"), ("full", "mixed", "adamw-8bit", False)]),
    Group("Qwen/Qwen2.5-7B", "Qwen--Qwen2.5-7B.json", 4096, methods=[("qlora", "bf16")],
          grid=[(8, 4096, True), (2, 512, False)]),
]

# Measured after --prepare-kbit and float32 attention were modelled from the rows above: other models and
# shapes with a prepared QLoRA base, and plain float32 training with grouped-query attention.
BNB_HELD_OUT = [
    Group("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json", 2048, methods=[("qlora", "bf16", "adamw", True)],
          grid=[(4, 2048, False), (2, 512, True)]),
    Group("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", 2048, methods=[("qlora", "bf16", "adamw", True)],
          grid=[(2, 2048, False), (4, 2048, True)]),
    Group("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", 2048,
          methods=[("full", "fp32", "adamw", False), ("lora", "fp32", "adamw", False)], grid=[(2, 1024, False)]),
    Group("Qwen/Qwen2.5-7B", "Qwen--Qwen2.5-7B.json", 4096, methods=[("qlora", "bf16", "adamw", True)],
          grid=[(4, 2048, True)]),
]

# Setups the calibration never measured, run as they are estimated: fp16 training, LoRA under mixed precision.
PRECISIONS_HELD_OUT = [
    Group(model_id, config_file, 2048, grid=[(2, 1024, False), (2, 1024, True)],
          methods=[("full", "fp16", "adamw", False), ("lora", "fp16", "adamw", False),
                   ("lora", "mixed", "adamw", False)])
    for model_id, config_file in (("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json"),
                                  ("Qwen/Qwen3-0.6B", "Qwen--Qwen3-0.6B.json"))
]

# Measured after LoRA under autocast was modelled from PRECISIONS_HELD_OUT: other models and shapes.
LORA_MIXED_HELD_OUT = [
    Group("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", 2048, methods=[("lora", "mixed", "adamw", False)],
          grid=[(2, 2048, False), (4, 2048, True)]),
    Group("Qwen/Qwen2.5-1.5B", "Qwen--Qwen2.5-1.5B.json", 2048, methods=[("lora", "mixed", "adamw", False)],
          grid=[(4, 2048, False), (2, 512, True)]),
    Group("openai-community/gpt2-medium", "openai-community--gpt2-medium.json", 1024,
          methods=[("lora", "mixed", "adamw", False)], grid=[(4, 1024, False)]),
]


def case_id(model_id: str, method: str, precision: str, optimizer: str, batch: int, seq: int, ckpt: bool,
            accumulation: int, rank: int, kbit_prep: bool = False) -> str:
    lora = f"|r{rank}" if method != "full" else ""
    prep = "|kbit" if kbit_prep else ""
    return (f"{model_id}|{method}|{precision}|{optimizer}|b{batch}|s{seq}|gc{int(ckpt)}|ga{accumulation}{lora}"
            f"{prep}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--errors", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time-budget-s", type=float, default=300.0)
    parser.add_argument("--models", default=None, help="comma-separated model ids (default: the whole matrix)")
    parser.add_argument("--tiny", action="store_true", help="one decoder layer and short sequences (harness check)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--run-label", default="sweep")
    parser.add_argument("--matrix", choices=("default", "bnb", "bnb-held-out", "precisions-held-out",
                                             "lora-mixed-held-out"),
                        default="default",
                        help="bnb: QLoRA and the 8-bit AdamW (needs bitsandbytes); bnb-held-out: measured after")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    context = m.init_cuda() if cuda else {}
    versions = m.environment() if cuda else {}
    for package in ("transformers", "peft"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    versions["bitsandbytes"] = __import__("bitsandbytes").__version__ if tm.has_bitsandbytes() else None
    out = open(args.out, "a", encoding="utf-8")
    errors = open(args.errors or os.devnull, "a", encoding="utf-8")
    wanted = set(args.models.split(",")) if args.models else None
    shapes = [(1, 32), (2, 64)] if args.tiny else SHAPES
    overrides = {"num_hidden_layers": 1} if args.tiny else {}

    def left() -> float:
        return args.time_budget_s - (time.perf_counter() - started)

    def record(row: dict[str, Any]) -> None:
        out.write(json.dumps(row, sort_keys=True) + "\n")
        out.flush()

    cases = 0
    matrices = {"default": MATRIX, "bnb": BNB_MATRIX, "bnb-held-out": BNB_HELD_OUT,
                "precisions-held-out": PRECISIONS_HELD_OUT, "lora-mixed-held-out": LORA_MIXED_HELD_OUT}
    for group in matrices[args.matrix]:
        if wanted and group.model_id not in wanted:
            continue
        config_path = REPO / "data" / "models" / group.config_file
        if not config_path.exists():
            continue
        raw = json.loads(config_path.read_text())
        raw.update(overrides)
        for index, entry in enumerate(group.methods):
            method, precision = entry[0], entry[1]
            base_optimizer = entry[2] if len(entry) > 2 else "adamw"
            kbit_prep = bool(entry[3]) if len(entry) > 3 else False
            if left() < 15:
                print(f"time budget reached before {group.model_id} {method} {precision}", flush=True)
                return 0
            try:
                model, info = tm.build_train_model(raw, method, precision, lora_rank=args.lora_rank,
                                                   device=args.device, kbit_prep=kbit_prep)
            except Exception as error:  # a build that fails is recorded, the sweep goes on
                errors.write(json.dumps({"model_id": group.model_id, "method": method, "precision": precision,
                                         "phase": "build", "error": repr(error)[:500],
                                         "traceback": traceback.format_exc()[-2000:]}) + "\n")
                errors.flush()
                tm.clear(args.device)
                continue
            if group.grid is not None and not args.tiny:
                grid = [(base_optimizer, b, s, ckpt, 1) for b, s, ckpt in group.grid]
            else:
                grid = [(base_optimizer, b, min(s, group.max_seq), ckpt, 1) for ckpt in (False, True)
                        for b, s in shapes]
            if index == 0 and not args.tiny:
                grid += group.extras
            for optimizer, batch, seq, ckpt, accumulation in grid:
                if left() < 8:
                    print("time budget reached", flush=True)
                    del model
                    return 0
                cid = case_id(group.model_id, method, precision, optimizer, batch, seq, ckpt, accumulation,
                              args.lora_rank, kbit_prep)
                try:
                    result = tm.run_train_case(model, precision=precision, optimizer_name=optimizer, batch=batch,
                                               seq=seq, grad_checkpointing=ckpt, grad_accumulation=accumulation,
                                               device=args.device)
                except Exception as error:
                    errors.write(json.dumps({"case_id": cid, "phase": "run", "error": repr(error)[:500],
                                             "traceback": traceback.format_exc()[-2000:]}) + "\n")
                    errors.flush()
                    tm.clear(args.device)
                    continue
                row = {"case_id": cid, "run": args.run_label, "model_id": group.model_id,
                       "config_file": f"data/models/{group.config_file}", "config_overrides": overrides,
                       "method": method, "lora_rank": args.lora_rank if method != "full" else None,
                       "lora_alpha": 2 * args.lora_rank if method != "full" else None,
                       "lora_targets": "all-linear" if method != "full" else None, "kbit_prep": kbit_prep,
                       "context": context, "versions": versions, **info, **result}
                record(row)
                cases += 1
                peak = result.get("peak_allocated")
                print(f"{cid}: peak {peak / 2**30 if peak else 0:.2f} GiB in {result['seconds']}s "
                      f"({left():.0f}s left)", flush=True)
            del model
            tm.clear(args.device)
    print(f"{cases} cases in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
