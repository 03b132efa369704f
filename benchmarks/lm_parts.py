"""Where lm_vs_pytorch.py's gap is: each part of one GPT block, bigjax against PyTorch, on CPU.

  pip install -r benchmarks/requirements.txt
  python benchmarks/lm_parts.py [--rounds 9] [--calls 8] [--threads N]

The lm_gpt:small block (d_model 384, 6 heads, GELU MLP 4x, LayerNorm, RoPE) at the benchmark's
batch (16 x 256), float32. Each part runs forward and backward (the gradient of the inputs and
the weights for one output cotangent): bigjax's flax modules jitted with train.cpu_matmul=onednn's
compiler options, as the LM's train step is; PyTorch's are the modules of lm_vs_pytorch.py's
reference. The parts:

  attention_core  q, k, v -> output: bigjax's `attention` (two query blocks) / F.scaled_dot_product_attention
  attention       x + attention(norm(x)): norm, query/key/value, RoPE, the core, output projection
  mlp             x + mlp(norm(x)): norm, up, GELU (tanh), down
  layernorm       norm(x) alone
  block           the whole Block

Interleaved by round (every contender once per round, `--calls` calls each); each part's `ratio`
is the median of the rounds' pytorch_ms / bigjax_ms (above 1: bigjax is faster). The last stdout
line is JSON: {"attention": {"bigjax_ms": .., "pytorch_ms": .., "ratio": ..}, ...}.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lm_vs_pytorch as reference  # noqa: E402  (imports bigjax first; see there)

B, T, D, HEADS = 16, 256, 384, 6


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=9)
  parser.add_argument('--calls', type=int, default=8, help='timed calls per contender per round')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  if min(args.rounds, args.calls, args.threads) < 1:
    parser.error('--rounds, --calls and --threads must be >= 1')
  return args


def bigjax_parts(x, g):
  """name -> a no-argument function running that part's jitted forward and backward."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from bigjax.cpu import xla_options
  from bigjax.models import attention, transformer
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  valid = jnp.ones((B, T), bool)
  norm = lambda name: transformer.NORMS['layernorm'](dtype=jnp.float32, name=name)  # noqa: E731

  class AttentionPart(nn.Module):
    @nn.compact
    def __call__(self, x):
      attention = transformer.Attention(HEADS, HEADS, D // HEADS, jnp.float32, use_rope=True,
                                        query_blocks=2, name='attention')
      return x + attention(norm('attention_norm')(x), positions, valid)

  class MlpPart(nn.Module):
    @nn.compact
    def __call__(self, x):
      return x + transformer.Mlp(4 * D, 'gelu', jnp.float32, name='mlp')(norm('mlp_norm')(x))

  class NormPart(nn.Module):
    @nn.compact
    def __call__(self, x):
      return norm('norm')(x)

  block = transformer.Block(HEADS, HEADS, D // HEADS, 4 * D, 'gelu', 'layernorm', 0.0, jnp.float32,
                            use_rope=True, query_blocks=2)
  x, g = jnp.asarray(x), jnp.asarray(g)
  modules = {'attention': (AttentionPart(), ()), 'mlp': (MlpPart(), ()), 'layernorm': (NormPart(), ()),
             'block': (block, (positions, valid))}  # module, its arguments after x
  parts = {}
  for name, (module, extra) in modules.items():
    params = module.init(jax.random.key(0), x, *extra)
    forward = lambda p, x, module=module, extra=extra: module.apply(p, x, *extra)  # noqa: E731
    step = jax.jit(lambda p, x, g, f=forward: jax.vjp(f, p, x)[1](g), compiler_options=xla_options.ONEDNN)
    parts[name] = lambda step=step, params=params: jax.block_until_ready(step(params, x, g))
  heads = lambda a: jnp.asarray(a.reshape(B, T, HEADS, -1))  # noqa: E731
  q, k, v, out_g = heads(x), heads(x[:, ::-1]), heads(g[:, ::-1]), heads(g)
  core = jax.jit(lambda q, k, v, out_g: jax.vjp(
      lambda q, k, v: attention.attention(q, k, v, valid, causal=True, blocks=2), q, k, v)[1](out_g),
      compiler_options=xla_options.ONEDNN)
  parts['attention_core'] = lambda: jax.block_until_ready(core(q, k, v, out_g))
  return parts


def pytorch_parts(x, g):
  import torch
  import torch.nn.functional as F
  gpt = reference.GPT(vocab=2, num_layers=1, d_model=D, num_heads=HEADS, mlp_hidden=4 * D, max_length=T,
                      pad_id=0)  # for its block and RoPE tables
  block, cos, sin = gpt.blocks[0], gpt.cos, gpt.sin
  functions = {
      'attention': lambda x: block.attention_residual(x, cos, sin),
      'mlp': block.mlp_residual,
      'layernorm': block.mlp_norm,
      'block': lambda x: block(x, cos, sin),
  }
  x, g = torch.tensor(x).requires_grad_(), torch.tensor(g)

  def run(function):
    block.zero_grad(set_to_none=True)  # as the train step: backward writes fresh gradients
    x.grad = None
    function(x).backward(g)
  parts = {name: (lambda f=f: run(f)) for name, f in functions.items()}
  heads = lambda t: t.detach().reshape(B, T, HEADS, -1).transpose(1, 2).contiguous()  # noqa: E731
  q, k, v = (heads(t).requires_grad_() for t in (x, x.flip(1), g.flip(1)))
  out_g = heads(g)
  parts['attention_core'] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(out_g)
  return parts


def main(argv=None) -> dict:
  args = parse_args(argv)
  reference.set_threads(args.threads)
  import numpy as np
  rng = np.random.default_rng(0)
  x, g = (rng.standard_normal((B, T, D), dtype=np.float32) for _ in range(2))
  contenders = {'bigjax': bigjax_parts(x, g), 'pytorch': pytorch_parts(x, g)}
  for parts in contenders.values():
    for run in parts.values():
      run()  # compile, allocate
  ms = {who: {name: [] for name in parts} for who, parts in contenders.items()}
  for round_ in range(args.rounds):
    for name in contenders['bigjax']:
      for who, parts in contenders.items():
        start = time.perf_counter()
        for _ in range(args.calls):
          parts[name]()
        ms[who][name].append((time.perf_counter() - start) / args.calls * 1e3)
    latest = (f'{n} {ms["bigjax"][n][-1]:.1f}/{ms["pytorch"][n][-1]:.1f} ms' for n in ms['bigjax'])
    print(f'round {round_ + 1}/{args.rounds} (bigjax/pytorch): ' + ', '.join(latest), flush=True)
  summary = {name: {'bigjax_ms': round(statistics.median(ms['bigjax'][name]), 2),
                    'pytorch_ms': round(statistics.median(ms['pytorch'][name]), 2),
                    'ratio': round(reference.median_ratio(ms['pytorch'][name], ms['bigjax'][name]), 4)}
             for name in ms['bigjax']}
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()
