#!/usr/bin/env bash
# The measurements behind tests/fixtures/measurements/{multi-gpu,training-bnb,distributed}*-h200.jsonl, taken on
# a machine with two H200s, one call per stage (each JSON line is flushed as it is measured):
#
#   benchmarks/sweep_two_gpus.sh calibration   # the cases the estimates were set from
#   benchmarks/sweep_two_gpus.sh held-out      # other models and shapes, measured afterwards
#   benchmarks/sweep_two_gpus.sh zero          # DeepSpeed ZeRO 1-3 (needs deepspeed; then zero-held-out)
#
# 1. one model spread over both GPUs by device_map="auto" (alone on the machine, so NVML figures are per GPU);
# 2. `gpuplan verify --gpus 2` end to end (random weights; real weights saved to a local folder), and
#    `gpuplan verify --train --method qlora` at the shape of the training guide;
# 3. QLoRA and the 8-bit AdamW (bitsandbytes) on GPU 1 while FSDP2 / DDP steps run over both GPUs. torch's
#    counters are per process, so the two do not disturb each other's figures.
# Needs torch, transformers, accelerate, peft, bitsandbytes (deepspeed for the zero stages), and gpuplan's own
# dependencies on PYTHONPATH.
set -u
STAGE=${1:-calibration}
OUT=${OUT:?set OUT to the folder the results go to}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ERRORS=$OUT/errors.jsonl
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv >"$OUT/gpus.csv"
python3 -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, \
'gpus', torch.cuda.device_count(), 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, \
'peft', peft.__version__)"

case "$STAGE" in
  zero|zero-held-out)
    export DS_ACCELERATOR=cuda
    OUTFILE=distributed-zero-h200.jsonl
    [ "$STAGE" = zero-held-out ] && OUTFILE=distributed-zero-heldout-h200.jsonl
    timeout 300 python3 -m torch.distributed.run --nproc_per_node 2 benchmarks/calibrate_distributed.py \
      --cases "$STAGE" --run-label "$STAGE" --out "$OUT/$OUTFILE" --errors "$ERRORS" --time-budget-s 240 2>&1 \
      | grep -v -i warn
    exit 0 ;;
esac

if [ "$STAGE" = calibration ]; then
  SPLIT_OUT=multi-gpu-h200.jsonl; DIST_OUT=distributed-h200.jsonl; BNB_MODELS=""
else
  SPLIT_OUT=multi-gpu-heldout-h200.jsonl; DIST_OUT=distributed-heldout-h200.jsonl
  BNB_MODELS="--models Qwen/Qwen2.5-1.5B,google/gemma-2-2b-it"
fi

echo "== 1. generate() over 2 GPUs ($STAGE)"
timeout 150 python3 benchmarks/calibrate_multi_gpu.py --gpus 2 --cases "$STAGE" --run-label "$STAGE" \
  --out "$OUT/$SPLIT_OUT" --errors "$ERRORS" --time-budget-s 100

echo "== 2. gpuplan verify --gpus 2, verify --train --method qlora"
{
  timeout 50 python3 -m gpuplan verify meta-llama/Llama-2-7b-hf --dtype fp16 --batch 8 --seq 4096 \
    --new-tokens 16 --random-weights --gpus 2 --format json
  echo "rc=$?"
  if [ "$STAGE" != calibration ]; then
    timeout 60 python3 -c "
import json, sys, torch
sys.path.insert(0, '.')
from transformers import AutoModelForCausalLM
from gpuplan.verify.measure import load_config
config, _ = load_config(json.load(open('data/models/meta-llama--Llama-3.2-1B.json')))
with torch.device('cuda'):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained('/tmp/llama-3.2-1b-random')
" && timeout 60 python3 -m gpuplan verify /tmp/llama-3.2-1b-random --dtype bf16 --batch 8 --seq 4016 \
      --new-tokens 16 --gpus 2 --format json
    echo "rc=$?"
    timeout 90 python3 -m gpuplan verify Qwen/Qwen2.5-7B --train --method qlora --lora-rank 16 \
      --grad-checkpointing --batch 8 --seq 4096 --random-weights --format json
    echo "rc=$?"
  fi
} >"$OUT/cli-verify.txt" 2>&1

echo "== 3. bitsandbytes on GPU 1, FSDP2 / DDP on both ($STAGE)"
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES=1 timeout 330 python3 benchmarks/calibrate_training.py --matrix bnb $BNB_MODELS \
  --run-label "bnb-$STAGE" --out "$OUT/training-bnb-h200.jsonl" --errors "$ERRORS" --time-budget-s 310 \
  >"$OUT/bnb.log" 2>&1 &
timeout 300 python3 -m torch.distributed.run --nproc_per_node 2 benchmarks/calibrate_distributed.py \
  --cases "$STAGE" --run-label "$STAGE" --out "$OUT/$DIST_OUT" --errors "$ERRORS" --time-budget-s 220 2>&1 \
  | grep -v -i warn
wait
tail -n 60 "$OUT/bnb.log"
