#!/usr/bin/env bash
# What only an NVIDIA GPU can check (model.attention=cudnn), in one go, for a short GPU loan:
#   1. installs jax[cuda12] at requirements.txt's jax version;
#   2. cuDNN's flash attention against XLA's (benchmarks/gpu_check.py);
#   3. lm_gpt:124m for 50 steps in bf16 with attention auto (cuDNN) and xla, and each one's
#      tokens/s and MFU from its metrics.jsonl (the first logged interval, which compiles, left out).
# Run from the repository root: bash benchmarks/gpu_check.sh [WORKDIR]. Record the figures in
# docs/performance.md with the date and the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/bigjax_gpu_check}
jax_version=$(sed -n 's/^jax==//p' requirements.txt)
pip install -q -r requirements.txt "jax[cuda12]==$jax_version"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/gpu_check.py
for attention in auto xla; do
  rm -rf "$out/$attention"
  python -m bigjax.main --config=experiments/lm_gpt.py:124m --workdir="$out/$attention" \
      --config.model.attention=$attention --config.train.steps=50 --config.train.log_every=10 \
      --config.train.eval_every=0 --config.checkpoint.every=1000 --config.train.batch_size=32
  python - "$out/$attention/metrics.jsonl" "$attention" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"split": "train"' in l]
rates = [l for l in lines[1:] if 'mfu' in l]
key = next(k for k in rates[0] if k.endswith('_per_s'))
print(json.dumps({'attention': sys.argv[2], key: statistics.median(l[key] for l in rates),
                  'mfu': statistics.median(l['mfu'] for l in rates)}))
PY
done
