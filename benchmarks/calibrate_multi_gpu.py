"""Measure transformers ``generate()`` with one model spread over several GPUs (``device_map="auto"``).

Each case appends one JSON line to ``--out`` with every GPU's figures (``per_gpu``) and the device map
transformers computed. The lines become ``tests/fixtures/measurements/multi-gpu-h200.jsonl``, which gpuplan's
``--pipeline-parallel-size`` estimate for the transformers engine is checked against.

    python3 benchmarks/calibrate_multi_gpu.py --gpus 2 --out $OUT/multi-gpu-h200.jsonl

The model is built with random weights over the GPUs as gpuplan/verify/measure.py build_model_split does
(meta device, transformers' own device map, accelerate's dispatch_model).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpuplan.verify import measure as m  # noqa: E402

NEW_TOKENS = 16
# (model id, config file, dtype, attention, [(batch, prompt tokens)])
CASES = [
    ("meta-llama/Llama-2-7b-hf", "meta-llama--Llama-2-7b-hf.json", "fp16", "sdpa", [(8, 4080), (1, 512)]),
    ("Qwen/Qwen2.5-7B", "Qwen--Qwen2.5-7B.json", "bf16", "sdpa", [(8, 4000), (1, 512)]),
    ("meta-llama/Llama-3.2-1B", "meta-llama--Llama-3.2-1B.json", "bf16", "sdpa", [(8, 4000)]),
    ("google/gemma-2-2b-it", "google--gemma-2-2b-it.json", "bf16", "eager", [(8, 4000)]),
]
# Measured after the cases above: a mixture of experts that needs more than one 80 GB GPU.
HELD_OUT = [
    ("mistralai/Mixtral-8x7B-v0.1", "mistralai--Mixtral-8x7B-v0.1.json", "bf16", "sdpa", [(1, 512), (8, 4000)]),
]


def case_id(model_id: str, dtype: str, attn: str, batch: int, prompt: int, gpus: int) -> str:
    return f"{model_id}|{dtype}|{attn}|b{batch}|p{prompt}|n{NEW_TOKENS}|gpus{gpus}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--errors", default=os.devnull)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--time-budget-s", type=float, default=150.0)
    parser.add_argument("--run-label", default="multi-gpu")
    parser.add_argument("--cases", choices=("calibration", "held-out"), default="calibration")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    contexts = m.init_cuda_devices(args.gpus)
    versions = m.environment()
    started = time.perf_counter()
    out = open(args.out, "a", encoding="utf-8")
    errors = open(args.errors, "a", encoding="utf-8")
    for model_id, config_file, dtype, attn, shapes in HELD_OUT if args.cases == "held-out" else CASES:
        if time.perf_counter() - started > args.time_budget_s:
            print("time budget reached", flush=True)
            break
        raw = json.loads((REPO / "data" / "models" / config_file).read_text())
        try:
            model, info = m.build_model_split(raw, args.gpus, dtype, attn)
        except Exception as error:
            errors.write(json.dumps({"model_id": model_id, "phase": "build", "error": repr(error)[:500],
                                     "traceback": traceback.format_exc()[-3000:]}) + "\n")
            errors.flush()
            continue
        for batch, prompt in shapes:
            cid = case_id(model_id, dtype, attn, batch, prompt, args.gpus)
            try:
                run = m.measure_generate_split(model, batch, prompt, NEW_TOKENS, args.gpus)
            except Exception as error:
                errors.write(json.dumps({"case_id": cid, "phase": "run", "error": repr(error)[:500],
                                         "traceback": traceback.format_exc()[-3000:]}) + "\n")
                errors.flush()
                continue
            row = {"case_id": cid, "run": args.run_label, "model_id": model_id,
                   "config_file": f"data/models/{config_file}", "config_overrides": {}, "dtype": dtype,
                   "attn": attn, "contexts": contexts, "versions": versions, **info, **run}
            out.write(json.dumps(row, sort_keys=True) + "\n")
            out.flush()
            peaks = [g.get("peak_allocated") for g in run["per_gpu"]]
            print(f"{cid}: peaks {[round(p / 2**30, 2) if p else p for p in peaks]} GiB", flush=True)
        del model
        m._clear_cuda()
    return 0


if __name__ == "__main__":
    sys.exit(main())
