"""Peak GPU memory of generate() for hybrid, state-space and sparse-attention models built from configs.

Each case builds a model with random weights directly on the GPU from a config below (small versions of
Qwen3-Next, Nemotron-H and DeepSeek-V3.2: the same layer kinds, fewer layers and experts), runs greedy
generate() for a fixed number of new tokens and writes one JSON line: the config, the allocation before the
build (after a warm-up matmul that creates the cuBLAS workspace), the weights' allocation, the peak
allocation during generate(), and the bytes the returned cache holds, per layer kind
(benchmarks/record_architectures.py cache_snapshot). tests/test_hybrid_measurements.py replays the lines
against gpuplan's estimate.

With ``--min-memory`` each case is also run under ever tighter caps of PyTorch's caching allocator
(gpuplan/verify/min_memory.py, the search ``gpuplan verify --min-memory`` does) for the smallest GPU memory in which
it completes; that needs gpuplan's verify module (and pydantic) importable.

    PYTHONUNBUFFERED=1 python benchmarks/measure_hybrid_generate.py --out results.jsonl [--min-memory]

Needs torch with CUDA and transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record_architectures import cache_snapshot  # noqa: E402

QWEN3_NEXT = {
    "model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 8, "full_attention_interval": 4,
    "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16,
    "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4, "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "intermediate_size": 5120, "decoder_sparse_step": 1,
    "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
NEMOTRON_H = {
    "model_type": "nemotron_h", "hidden_size": 2688, "hybrid_override_pattern": "MEM*EMEM",
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "mamba_num_heads": 64,
    "mamba_head_dim": 64, "ssm_state_size": 128, "conv_kernel": 4, "n_groups": 8, "expand": 2,
    "n_routed_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "n_shared_experts": 1, "intermediate_size": 1856,
    "vocab_size": 131072, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "mlp_hidden_act": "relu2",
}
DEEPSEEK_V32 = {
    "model_type": "deepseek_v32", "hidden_size": 2048, "num_hidden_layers": 4, "first_k_dense_replace": 1,
    "num_attention_heads": 16, "num_key_value_heads": 16, "q_lora_rank": 768, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "index_n_heads": 32,
    "index_head_dim": 128, "index_topk": 2048, "n_routed_experts": 32, "num_experts_per_tok": 4,
    "n_shared_experts": 1, "moe_intermediate_size": 768, "intermediate_size": 6144, "n_group": 1,
    "topk_group": 1, "vocab_size": 129280, "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
CASES = [(QWEN3_NEXT, 1, 512), (QWEN3_NEXT, 1, 4096), (NEMOTRON_H, 1, 512), (NEMOTRON_H, 1, 4096),
         (DEEPSEEK_V32, 1, 512), (DEEPSEEK_V32, 1, 4096),
         (QWEN3_NEXT, 8, 1024), (NEMOTRON_H, 8, 1024), (DEEPSEEK_V32, 4, 2048)]
NEW_TOKENS = 32


def run_case(raw: dict, batch: int, prompt: int, new_tokens: int, min_memory: bool = False) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    kwargs = {k: v for k, v in raw.items() if k != "model_type"}
    config = AutoConfig.for_model(raw["model_type"], **kwargs)
    t0 = time.time()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() - before
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    ids = torch.randint(10, 1000, (batch, prompt), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    snap = cache_snapshot(cache) if cache is not None else None
    row = {
        "case_id": f"{raw['model_type']}|bf16|sdpa|b{batch}|p{prompt}|n{new_tokens}",
        "model_type": raw["model_type"], "config": raw, "dtype": "bf16", "attn": "sdpa", "batch": batch,
        "prompt_tokens": prompt, "new_tokens": new_tokens, "generated": int(out.sequences.shape[1] - prompt),
        "allocated_before_build": before, "weights_allocated": weights, "parameters": params,
        "buffer_bytes": buffers, "peak_allocated": peak, "peak_over_before": peak - before,
        "cache": snap, "seconds": round(time.time() - t0, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gpu_name": torch.cuda.get_device_name(0)},
    }
    del out, cache
    if min_memory:
        import os

        from gpuplan.verify import min_memory as mm

        search = mm.measure_min_memory(mm.generate_work(model, batch, prompt, new_tokens))
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
        row["allocator"] = "expandable" if "expandable_segments:True" in conf else "default"
        row["min_memory"] = {**search, "allocated_before_case": before + weights}
    del model
    return row


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    ap.add_argument("--min-memory", action="store_true", help="also search for the smallest GPU memory that runs it")
    args = ap.parse_args()
    torch.cuda.init()
    a = torch.ones(64, 64, device="cuda")
    (a @ a).sum().item()  # creates the cuBLAS workspace before any case is measured
    warm = torch.cuda.memory_allocated()
    with args.out.open("a") as fh:
        for raw, batch, prompt in CASES:
            try:
                row = run_case(raw, batch, prompt, args.new_tokens, args.min_memory)
            except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                row = {"case_id": f"{raw['model_type']}|b{batch}|p{prompt}", "error": f"{type(exc).__name__}: {exc}"}
            row["allocated_after_warmup"] = warm
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            print(row["case_id"], row.get("peak_over_before"), (row.get("min_memory") or {}).get("min_gpu_bytes"),
                  row.get("error", ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
