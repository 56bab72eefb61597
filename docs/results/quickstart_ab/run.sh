#!/bin/sh
# The quickstart A/B of docs/results.md (finding 7): seeds 0-2, bound_gradient full vs last.
# As run on 2026-11-24: each run pinned to one core with one TensorFlow thread, the six runs one
# after another (the model_dir was /tmp/qs/<mode>_s<seed>; metrics, flags and logs are copied here).
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1
for s in 0 1 2; do for m in full last; do
  taskset -c 1 gloro-train --preset=quickstart --seed=$s --bound_gradient=$m \
      --model_dir=runs/quickstart_ab/${m}_s$s --verbose=2
done; done
