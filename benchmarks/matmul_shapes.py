"""XLA:CPU's matmuls against PyTorch's at the LM and LSTM benchmarks' shapes: what limits them.

  python benchmarks/matmul_shapes.py [--model lm|lstm] [--rounds 7] [--threads N]

The shapes of one layer of experiments/lm_gpt.py:small at batch 16, context 256 (4,096 tokens,
d_model 384, 6 heads of 64): the MLP's and the attention projections' plain 2-D GEMMs, one weight
gradient (its contraction over the 4,096 tokens), and the attention's batched matmuls (16 x 6 =
96 of them) for the second of two query blocks, as bigjax's CPU attention runs them
(heads-major: scores = q k^T, out = p v). float32, random inputs.

--model lstm: every matmul of one lstm_vs_pytorch.py train step (batch 64, length 256, embedding
100, hidden 200): the input projection of all steps and its two gradients, the recurrent weight
gradient over all steps, and the 256 forward and 256 backward recurrent matmuls of 64 rows each.
It adds up each shape's time times its count per step: what a step made of separate matmul calls
(a lax.scan, or any loop over a BLAS) costs with nothing else in it, for each contender and the
fastest per shape. Its JSON also holds "step": {"xla_ms", "xla_onednn_ms", "torch_ms", "best_ms",
"best_steps_per_s"}.

Each shape is timed three ways, interleaved: XLA with its default matmuls (YNNPACK/Eigen), XLA
with oneDNN's (train.cpu_matmul=onednn, bigjax/cpu/xla_options.py), and torch.matmul; each round
the best of several calls, the summary the median over rounds. The last stdout line is JSON:
{"<shape>": {"xla_gflops": .., "xla_onednn_gflops": .., "torch_gflops": .., "ratio": xla / torch,
"onednn_ratio": xla_onednn / torch}, ...}.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import cpu  # noqa: E402, I001
cpu.keep_freed_memory_on_cpu()  # glibc's malloc keeps freed memory, as `bigjax.main` sets it: before any
# library starts threads (bigjax/cpu/heap.py).

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lm_vs_pytorch import set_threads  # noqa: E402

TOKENS, D_MODEL, MLP, HEADS, HEAD_DIM, BLOCK, CONTEXT = 4096, 384, 1536, 96, 64, 128, 256

# name: (lhs shape, rhs shape, lhs transposed); a leading third axis is a batch of matmuls
SHAPES = {
    'mlp_up (4096x384 @ 384x1536)': ((TOKENS, D_MODEL), (D_MODEL, MLP), False),
    'mlp_down (4096x1536 @ 1536x384)': ((TOKENS, MLP), (MLP, D_MODEL), False),
    'projection (4096x384 @ 384x384)': ((TOKENS, D_MODEL), (D_MODEL, D_MODEL), False),
    'qkv (4096x384 @ 384x1152)': ((TOKENS, D_MODEL), (D_MODEL, 3 * D_MODEL), False),
    'mlp_up weight grad (4096x384)^T @ 4096x1536': ((TOKENS, D_MODEL), (TOKENS, MLP), True),
    'scores (96 x 128x64 @ 64x256)': ((HEADS, BLOCK, HEAD_DIM), (HEADS, HEAD_DIM, CONTEXT), False),
    'values (96 x 128x256 @ 256x64)': ((HEADS, BLOCK, CONTEXT), (HEADS, CONTEXT, HEAD_DIM), False),
}

ROWS, LENGTH, EMBED, GATES, HIDDEN = 64 * 256, 256, 100, 800, 200  # lstm_vs_pytorch.py's step
# name: (lhs shape, rhs shape, lhs transposed, calls per train step)
LSTM_SHAPES = {
    'input projection (16384x100 @ 100x800)': ((ROWS, EMBED), (EMBED, GATES), False, 1),
    'its weight grad (16384x100)^T @ 16384x800': ((ROWS, EMBED), (ROWS, GATES), True, 1),
    'its input grad (16384x800 @ 800x100)': ((ROWS, GATES), (GATES, EMBED), False, 1),
    'recurrent weight grad (16384x200)^T @ 16384x800': ((ROWS, HIDDEN), (ROWS, GATES), True, 1),
    'recurrent step (64x200 @ 200x800)': ((64, HIDDEN), (HIDDEN, GATES), False, LENGTH),
    'recurrent step backward (64x800 @ 800x200)': ((64, GATES), (GATES, HIDDEN), False, LENGTH),
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
  parser.add_argument('--model', choices=('lm', 'lstm'), default='lm',
                      help="whose shapes: the LM's or the LSTM's")
  args = parser.parse_args(argv)
  if min(args.rounds, args.threads) < 1:
    parser.error('--rounds and --threads must be >= 1')
  set_threads(args.threads)
  import jax
  import jax.numpy as jnp

  from bigjax.cpu import xla_options

  rng = np.random.default_rng(0)
  # The LM's shapes are one layer's, not a whole train step's: count 0, no step total.
  shapes = LSTM_SHAPES if args.model == 'lstm' else {k: (*v, 0) for k, v in SHAPES.items()}
  result, step_seconds = {}, {}  # contender (and 'best', the fastest per shape): seconds a train step
  for name, (lhs_shape, rhs_shape, transposed, per_step) in shapes.items():
    def product(lhs, rhs, transposed=transposed):  # lhs^T: the contraction runs over lhs's rows
      return (lhs.T if transposed else lhs) @ rhs
    # XLA with its default matmuls (YNNPACK/Eigen), and with oneDNN's (train.cpu_matmul=onednn)
    xla = {k: jax.jit(product, compiler_options=options)
           for k, options in (('xla', {}), ('xla_onednn', xla_options.ONEDNN))}
    contenders = {k: (lambda a, b, f=f: f(a, b).block_until_ready()) for k, f in xla.items()}
    contenders['torch'] = product
    lhs, rhs = rng.random(lhs_shape, np.float32), rng.random(rhs_shape, np.float32)
    flops = 2 * np.prod(lhs_shape) * rhs_shape[-1]
    repeats = max(3, int(2e9 / flops))  # about 2 GFLOP a round
    inputs = {k: (jnp.asarray(lhs), jnp.asarray(rhs)) for k in xla}
    inputs['torch'] = (torch.from_numpy(lhs), torch.from_numpy(rhs))
    expected = product(*inputs['torch']).numpy()
    for k in xla:  # the same product, not just the same speed
      error = np.abs(np.asarray(contenders[k](*inputs[k])) - expected).max()
      assert error < 1e-3 * lhs_shape[-1 - transposed], (name, k, error)
    rates = {k: [] for k in contenders}
    for _ in range(args.rounds):
      for k, matmul in contenders.items():
        rates[k].append(flops / best_seconds(matmul, *inputs[k], repeats))
    gflops = {k: statistics.median(v) / 1e9 for k, v in rates.items()}
    result[name] = {**{f'{k}_gflops': round(v, 1) for k, v in gflops.items()},
                    'ratio': round(gflops['xla'] / gflops['torch'], 3),
                    'onednn_ratio': round(gflops['xla_onednn'] / gflops['torch'], 3)}
    print(f'{name:48s} ' + ' | '.join(f'{k} {v:6.1f}' for k, v in gflops.items())
          + f' GFLOP/s | ratio {result[name]["ratio"]:.2f}, with oneDNN {result[name]["onednn_ratio"]:.2f}',
          flush=True)
    if per_step:
      seconds = {k: flops / 1e9 / v for k, v in gflops.items()}
      for k, v in {**seconds, 'best': min(seconds.values())}.items():
        step_seconds[k] = step_seconds.get(k, 0.0) + per_step * v
  if step_seconds:
    step = result['step'] = {f'{k}_ms': round(v * 1e3, 1) for k, v in step_seconds.items()}
    step['best_steps_per_s'] = round(1 / step_seconds['best'], 3)
    each = ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in step_seconds.items() if k != 'best')
    print(f"one train step's matmuls alone: {each}; the fastest per shape {step['best_ms']:.0f} ms, "
          f"{step['best_steps_per_s']} steps/s", flush=True)
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
