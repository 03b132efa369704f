"""Compiling the train step with XLA options: oneDNN's matmuls on x86 CPUs (config.train.cpu_matmul).

XLA:CPU hands its matmuls to YNNPACK or Eigen by default. Its experimental oneDNN fusion runs
them with oneDNN instead, the library under PyTorch's CPU matmuls. At the LM benchmark's shapes
(benchmarks/matmul_shapes.py) that is faster for every matmul of a Transformer step, most of all
for the attention's small batched ones, so the Transformer experiments set it. The LSTM's step,
hundreds of small recurrent matmuls in a row, runs slower with it and keeps the default, as does
everything else: the fusion is experimental in XLA, and its failures (below) kill the process.
docs/performance.md has the figures.

XLA 0.10's oneDNN fusion aborts the process ("partition compile failed", SIGILL) when it runs
some fusions: several dots in one (the summed input gradients of matmuls that share an input,
which is why the Transformer fuses query/key/value, and SwiGLU's gate/up, into one matmul each
where this applies), or elementwise work on a dot's input (a GELU's gradient feeding the next
matmul's). The fusions that ran correctly are one dot of the fusion's inputs, maybe followed by
elementwise work on its result. `jit_and_compile` lets only those run: if the compiled program
holds any other oneDNN fusion, it compiles again with XLA's default matmuls.
"""

import math
import platform
import re
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from bigjax import sharding

CPU_MATMULS = ('xla', 'onednn')
ONEDNN = {'xla_cpu_use_onednn': True, 'xla_cpu_experimental_onednn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


def onednn_applies(cpu_matmul: str) -> bool:
  """oneDNN is asked for, the step runs on CPU, and jaxlib has oneDNN (its x86-64 builds)."""
  return (cpu_matmul == 'onednn' and sharding.platform() == 'cpu'
          and platform.machine().lower() in ('x86_64', 'amd64'))


def unsafe_onednn_fusions(hlo_text: str) -> list[str]:
  """Names of the compiled program's oneDNN fusions that are not one dot of the fusion's inputs
  followed by elementwise work on its result: the only kind this module lets run."""
  fused = set(re.findall(r'onednn_fusion[\w.]* = .*?calls=(%[\w.-]+)', hlo_text))
  computations = {c.split(' ', 1)[0]: c for c in re.split(r'\n(?=\S)', hlo_text)}  # each starts with its name
  return sorted(name for name in fused if not _one_dot_of_inputs(computations[name]))


# Ops after the dot that can run wrong when their other operand is an input of the fusion: this XLA's
# oneDNN multiplies a dot with a long contraction by a broadcast (a scalar, a per-column vector) into
# wrong numbers, hundreds of times the result (`(a @ w) / 196` with a: (8, 1000), a mean's gradient;
# right at every contraction up to 512 that was tried, wrong from 640). A product by a full-size input
# was right, but the fused computation cannot tell it from a broadcast one, so such products are let
# run only after contractions of at most _SHORT_CONTRACTION, half the longest seen right: the
# Transformers' attention scales (d_model 256 and below) keep oneDNN, and a ViT's mean pooling keeps its
# division out of the head's fusion (pool.py).
_SCALING = ('multiply', 'divide')
_SHORT_CONTRACTION = 256


def _one_dot_of_inputs(computation: str) -> bool:
  params, after_dot = set(), set()  # names of the fusion's inputs; of the dot and what reads it
  shapes, contraction = {}, 0
  for line in computation.splitlines()[1:]:
    if ' = ' not in line:
      continue
    match = re.match(r'\s*(?:ROOT )?(%[\w.-]+) = (?:\([^)]*\)|\S+) ([\w-]+)\(([^)]*)\)', line)
    if not match:
      return False
    name, op, operands = match[1], match[2], set(re.findall(r'%[\w.-]+', match[3]))
    shape = re.match(r'\s*(?:ROOT )?%[\w.-]+ = \w+\[([\d,]*)\]', line)
    shapes[name] = [int(d) for d in shape[1].split(',') if d] if shape else []
    if op == 'parameter':
      params.add(name)
    elif op == 'dot' and not after_dot and operands <= params:
      after_dot.add(name)
      lhs = shapes[re.findall(r'%[\w.-]+', match[3])[0]]
      dims = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
      contraction = math.prod(lhs[int(d)] for d in dims[1].split(',') if d) if dims and lhs else 1 << 30
    elif operands & after_dot and operands <= params | after_dot and (
        op not in _SCALING or operands <= after_dot or contraction <= _SHORT_CONTRACTION):
      after_dot.add(name)
    else:  # a second dot, work on a dot's input, a scaled long dot, or anything else
      return False
  return bool(after_dot)


def matmuls_for(cpu_matmul: str, dropout: float) -> str:
  """cpu_matmul, or 'xla' where oneDNN's matmuls would train a model with dropout. In this XLA they
  change what a Transformer block with dropout computes: its output differs from the one with
  XLA's matmuls by as much as the output itself, while without dropout the two agree to 1e-7, and
  a summarization run with them stopped learning. Not understood yet (docs/performance.md)."""
  if dropout > 0 and onednn_applies(cpu_matmul):
    logging.warning("train.cpu_matmul=onednn: oneDNN's matmuls and dropout (model.dropout=%s) give wrong "
                    "numbers in this XLA; compiling with XLA's own matmuls instead.", dropout)
    return 'xla'
  return cpu_matmul


def jit_and_compile(make_jitted: Callable[[dict], Any], args: tuple, cpu_matmul: str):
  """(step, compiled): a function that computes what make_jitted(compiler_options) does, and its
  executable compiled for `args`. Where `onednn_applies`, every input shape the step meets is
  compiled with oneDNN's matmuls, checked, and compiled again without them if a fusion is unsafe
  (XLA fuses differently at different shapes, as for bucketed batch lengths).
  """
  if not onednn_applies(cpu_matmul):
    jitted = make_jitted({})
    return jitted, jitted.lower(*args).compile()
  onednn, default, executables = make_jitted(ONEDNN), make_jitted({}), {}

  def compiled_for(*call_args):
    key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(call_args))
    if key not in executables:
      compiled = onednn.lower(*call_args).compile()
      unsafe = unsafe_onednn_fusions(compiled.as_text())
      if unsafe:
        logging.warning('train.cpu_matmul=onednn: XLA made %d oneDNN fusion(s) of a kind it may not run '
                        "(%s); compiling with XLA's own matmuls instead.", len(unsafe), unsafe[0])
        compiled = default.lower(*call_args).compile()
      executables[key] = compiled
    return executables[key]

  def step(*call_args):
    return compiled_for(*call_args)(*call_args)
  return step, compiled_for(*args)
