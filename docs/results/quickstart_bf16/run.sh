#!/bin/sh
# The quickstart A/B of docs/results.md (finding 8): seeds 0-2 with --train_dtype=bfloat16, against the
# float32 `full` runs of docs/results/quickstart_ab/ (same preset, seeds and pinning: each run on one
# core with one TensorFlow thread, one after another; metrics, flags and logs are copied here).
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
for s in 0 1 2; do
  taskset -c 1 gloro-train --preset=quickstart --seed=$s --train_dtype=bfloat16 \
      --model_dir=runs/quickstart_bf16/bf16_s$s --verbose=2
done
