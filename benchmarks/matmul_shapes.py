"""XLA:CPU's matmuls against PyTorch's at the LM benchmark's shapes: what limits lm_vs_pytorch.py.

  python benchmarks/matmul_shapes.py [--rounds 7] [--threads N]

The shapes of one layer of experiments/lm_gpt.py:small at batch 16, context 256 (4,096 tokens,
d_model 384, 6 heads of 64): the MLP's and the attention projections' plain 2-D GEMMs, and the
attention's batched matmuls (16 x 6 = 96 of them) for the second of two query blocks, as
bigjax's CPU attention runs them (heads-major: scores = q k^T, out = p v). float32, random inputs.

Each shape is timed both ways, interleaved (XLA, torch, XLA, torch, ...), each round the best of
several calls; the summary is the median over rounds. The last stdout line is JSON:
{"<shape>": {"xla_gflops": .., "torch_gflops": .., "ratio": xla / torch}, ...}.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bigjax  # noqa: E402, F401, I001  before torch: sets glibc malloc before any thread starts

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lm_vs_pytorch import set_threads  # noqa: E402

TOKENS, D_MODEL, MLP, HEADS, HEAD_DIM, BLOCK, CONTEXT = 4096, 384, 1536, 96, 64, 128, 256

# name: (lhs shape, rhs shape); a leading third axis is a batch of matmuls
SHAPES = {
    'mlp_up (4096x384 @ 384x1536)': ((TOKENS, D_MODEL), (D_MODEL, MLP)),
    'mlp_down (4096x1536 @ 1536x384)': ((TOKENS, MLP), (MLP, D_MODEL)),
    'projection (4096x384 @ 384x384)': ((TOKENS, D_MODEL), (D_MODEL, D_MODEL)),
    'scores (96 x 128x64 @ 64x256)': ((HEADS, BLOCK, HEAD_DIM), (HEADS, HEAD_DIM, CONTEXT)),
    'values (96 x 128x256 @ 256x64)': ((HEADS, BLOCK, CONTEXT), (HEADS, CONTEXT, HEAD_DIM)),
}


def best_seconds(matmul, lhs, rhs, repeats: int) -> float:
  matmul(lhs, rhs)  # warm: compiled, caches and thread pools up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(lhs, rhs)
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rounds', type=int, default=7, help='interleaved rounds; the summary is their median')
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='compute threads for both')
  args = parser.parse_args(argv)
  if min(args.rounds, args.threads) < 1:
    parser.error('--rounds and --threads must be >= 1')
  set_threads(args.threads)
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(0)
  xla_matmul = jax.jit(jnp.matmul)

  def matmul(lhs, rhs):
    return xla_matmul(lhs, rhs).block_until_ready()
  result = {}
  for name, (lhs_shape, rhs_shape) in SHAPES.items():
    lhs, rhs = rng.random(lhs_shape, np.float32), rng.random(rhs_shape, np.float32)
    flops = 2 * np.prod(lhs_shape) * rhs_shape[-1]
    repeats = max(3, int(2e9 / flops))  # about 2 GFLOP a round
    x_lhs, x_rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    t_lhs, t_rhs = torch.from_numpy(lhs), torch.from_numpy(rhs)
    error = np.abs(np.asarray(matmul(x_lhs, x_rhs)) - torch.matmul(t_lhs, t_rhs).numpy()).max()
    assert error < 1e-3 * lhs_shape[-1], (name, error)  # the same product, not just the same speed
    rates = {'xla': [], 'torch': []}
    for _ in range(args.rounds):
      rates['xla'].append(flops / best_seconds(matmul, x_lhs, x_rhs, repeats))
      rates['torch'].append(flops / best_seconds(torch.matmul, t_lhs, t_rhs, repeats))
    xla, pt = (statistics.median(rates[k]) / 1e9 for k in ('xla', 'torch'))
    result[name] = {'xla_gflops': round(xla, 1), 'torch_gflops': round(pt, 1), 'ratio': round(xla / pt, 3)}
    print(f'{name:34s} XLA {xla:6.1f} GFLOP/s | torch {pt:6.1f} GFLOP/s | ratio {xla / pt:.2f}', flush=True)
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
