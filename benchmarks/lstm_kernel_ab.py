"""Times edited copies of bigjax/cpu/lstm_cpu.cc against the committed one, interleaved (issue #5).

  python benchmarks/lstm_kernel_ab.py [--rounds 101] VARIANT.cc [VARIANT.cc ...]

Contenders: `ref` (the committed bigjax/cpu/lstm_cpu.cc), `control` (the same file again, built
under other names: its ratio is the noise floor) and each VARIANT.cc, named by its file name. Each
is compiled as bigjax does (native.py) with its FFI handlers renamed, and its forward and backward
calls run on lstm_vs_pytorch.py's shapes (T 256, B 64, E 100, H 200, a tenth of the tokens padding)
one contender after another, round after round. Whole-step benchmark runs on a shared 2-core VM
wander by ±0.08 in ratio; this puts the control within 0.3% of ref at 101 rounds.

Per contender it prints the median milliseconds of each call, the median of the rounds' ratios to
ref (below 1: faster), and whether its outputs are the same bits as ref's. The last stdout line is
JSON: {name: {"forward_ms", "backward_ms", "forward_ratio", "backward_ratio", "same_bits"}}.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import cpu  # noqa: E402, I001
cpu.keep_freed_memory_on_cpu()  # glibc's malloc keeps freed memory, as `bigjax.main` sets it: before any
# library starts threads (bigjax/cpu/heap.py).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bigjax.cpu import lstm, native  # noqa: E402

STEPS, BATCH, EMBED, HIDDEN = 256, 64, 100, 200
REFERENCE = os.path.join(os.path.dirname(native.__file__), 'lstm_cpu.cc')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('variants', nargs='+', help='edited copies of bigjax/cpu/lstm_cpu.cc')
  parser.add_argument('--rounds', type=int, default=101, help='interleaved rounds; the summary: their median')
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error('--rounds must be >= 1')
  for path in args.variants:
    if not os.path.isfile(path):
      parser.error(f'no such file: {path}')
  names = [os.path.splitext(os.path.basename(path))[0] for path in args.variants]
  if len(set(names)) < len(names) or {'ref', 'control'} & set(names):
    parser.error('the variants need distinct file names, other than ref.cc and control.cc')
  return args, names


def _median_ratio(mine, reference) -> float:
  return round(statistics.median(a / b for a, b in zip(mine, reference)), 4)


def calls(name: str, path: str, build_dir: str, inputs):
  """Builds path with its handlers renamed to name's, and returns (forward, backward) jitted calls."""
  with open(path) as f:
    source = f.read()
  renamed = os.path.join(build_dir, f'lstm_cpu_{name}.cc')
  with open(renamed, 'w') as f:
    for handler in lstm.KERNELS:
      source = source.replace(handler, f'{handler}_{name}')
    f.write(source)
  library = ctypes.cdll.LoadLibrary(native.build(renamed))  # raises if it does not compile
  targets = tuple(f'{handler}_{name}' for handler in lstm.KERNELS)
  for target in targets:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  x, valid, weights, d_states, d_last = inputs
  # The calls the model makes (bigjax/cpu/lstm.py), to this build's handlers: (states, last), residuals; then
  # the input and weight gradients.
  forward = jax.jit(lambda x: lstm.forward(x, valid, weights, False, targets))
  backward = jax.jit(lambda residuals: lstm.backward(False, residuals, (d_states, d_last), targets))
  return forward, backward


def main(argv=None) -> dict:
  args, names = parse_args(argv)
  rng = np.random.default_rng(0)
  inputs = (rng.standard_normal((STEPS, BATCH, EMBED), np.float32), rng.random((STEPS, BATCH)) >= 0.1,
            tuple(0.1 * rng.standard_normal(shape, np.float32)
                  for shape in ((EMBED, 4 * HIDDEN), (HIDDEN, 4 * HIDDEN), (4 * HIDDEN,))),
            rng.standard_normal((STEPS, BATCH, HIDDEN), np.float32),  # the states' gradient
            rng.standard_normal((BATCH, HIDDEN), np.float32))  # the last state's
  inputs = jax.tree.map(jnp.asarray, inputs)  # on the device once, not copied in every call
  contenders = {'ref': REFERENCE, 'control': REFERENCE, **dict(zip(names, args.variants))}
  built = {}
  with tempfile.TemporaryDirectory() as build_dir:
    for name, path in contenders.items():
      try:
        built[name] = calls(name, path, build_dir, inputs)
      except subprocess.CalledProcessError as error:
        print(f'lstm_kernel_ab.py: error: {path} does not compile:\n{error.stderr.strip()[-2000:]}',
              file=sys.stderr)
        sys.exit(2)
  outputs = {}
  for name, (forward, backward) in built.items():  # compiles each, and checks its bits against ref's
    (states, last), residuals = forward(inputs[0])
    d_x, d_weights = backward(residuals)
    outputs[name] = [np.asarray(a) for a in (states, last, *residuals[3:], d_x, *d_weights)]
  times = {name: ([], []) for name in built}
  for round_ in range(args.rounds):
    for name, (forward, backward) in built.items():
      start = time.perf_counter()
      _, residuals = jax.block_until_ready(forward(inputs[0]))
      middle = time.perf_counter()
      jax.block_until_ready(backward(residuals))
      times[name][0].append(middle - start)
      times[name][1].append(time.perf_counter() - middle)
    if (round_ + 1) % 20 == 0:
      print(f'round {round_ + 1}/{args.rounds}', flush=True)
  summary = {}
  for name, (forward_s, backward_s) in times.items():
    summary[name] = s = {'forward_ms': round(statistics.median(forward_s) * 1e3, 2),
                         'backward_ms': round(statistics.median(backward_s) * 1e3, 2),
                         'forward_ratio': _median_ratio(forward_s, times['ref'][0]),
                         'backward_ratio': _median_ratio(backward_s, times['ref'][1]),
                         'same_bits': all(map(np.array_equal, outputs[name], outputs['ref']))}
    print(f'{name}: forward {s["forward_ms"]} ms ({s["forward_ratio"]} of ref), '
          f'backward {s["backward_ms"]} ms ({s["backward_ratio"]} of ref), '
          f'{"the same bits as" if s["same_bits"] else "other bits than"} ref')
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()
