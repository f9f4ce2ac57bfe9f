#!/usr/bin/env bash
# Runs `gpuplan verify` on a CUDA machine for a few workloads, each in a fresh process, with PyTorch's
# default caching allocator and with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, and appends every
# result (one JSON object per line) to $1. The outcome is recorded in
# tests/fixtures/measurements/verify-allocator-h200.jsonl and summarized in docs/accuracy.md.
set -u
out=${1:?usage: verify_allocator.sh OUT.jsonl}
cases=(
  "meta-llama/Llama-2-7b-hf --dtype fp16 --attn sdpa --batch 8 --seq 4016 --new-tokens 16"
  "mistralai/Mistral-7B-v0.1 --dtype bf16 --attn sdpa --batch 8 --seq 4016 --new-tokens 16"
  "meta-llama/Llama-3.2-1B --dtype bf16 --attn eager --batch 8 --seq 4016 --new-tokens 16"
  "Qwen/Qwen3-0.6B --dtype bf16 --attn eager --batch 8 --seq 4016 --new-tokens 16"
)
for alloc in default expandable_segments:True; do
  for case in "${cases[@]}"; do
    if [ "$alloc" = default ]; then unset PYTORCH_CUDA_ALLOC_CONF; else export PYTORCH_CUDA_ALLOC_CONF=$alloc; fi
    # shellcheck disable=SC2086
    python3 -m gpuplan verify $case --random-weights --format json > /tmp/verify.json
    code=$?
    python3 - "$alloc" "$code" "$out" <<'PY'
import json, sys
alloc, code, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    data = json.load(open("/tmp/verify.json"))
except ValueError:
    data = {"error": "no JSON output"}
data["allocator"] = alloc
data["exit_code"] = code
with open(out, "a") as handle:
    handle.write(json.dumps(data) + "\n")
PY
  done
done
