"""Where seq2seq_vs_pytorch.py's gap is: each part of the encoder-decoder step, bigjax vs PyTorch, on CPU.

  python benchmarks/seq2seq_parts.py [--rounds 5] [--calls 4] [--threads N] [--parts a,b]

translate.py:offline's shape (d_model 256, 4 heads, GELU MLP 4x, LayerNorm, vocabulary 4096, batch
64 x 64 source and 64 target tokens), float32. Each part runs forward and backward (the gradients
of its inputs and weights for one output cotangent). bigjax twice: jitted with XLA's own matmuls
(`xla`) and with train.cpu_matmul=onednn's compiler options (`onednn`; the script reports when
that program holds a fusion xla_options would refuse, where the step would fall back, and skips
that part: such a fusion may abort the process). The parts:

  loss           logits -> mean cross-entropy (the seq2seq task's former one: one_hot,
                 softmax_cross_entropy, argmax accuracy) / F.cross_entropy
  loss_int       the same loss from integer labels (optax.softmax_cross_entropy_with_integer_labels)
  unembed        x @ embedding.T, the tied logits / F.linear
  embed          the token lookup (a gather; its gradient a scatter-add) / nn.Embedding
  encoder_block  transformer.Block (bidirectional) / nn.TransformerEncoderLayer
  decoder_block  MemoryKV (this layer's keys and values of the encoder output) and DecoderBlock /
                 nn.TransformerDecoderLayer, gradients of the target side and the memory

Interleaved by round; each part's ratio is the median of the rounds' pytorch_ms / bigjax_ms. The
last stdout line is JSON.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seq2seq_vs_pytorch as reference  # noqa: E402  (imports bigjax first; see there)

if __name__ == '__main__':
  reference.heap.restart_with_huge_pages()  # as seq2seq_vs_pytorch.py's own run

B, T, D, HEADS, V = 64, 64, 256, 4, 4096


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--calls', type=int, default=4, help='timed calls per contender per round')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--parts', default='', help='comma-separated part names (default: all)')
  return parser.parse_args(argv)


def bigjax_parts(arrays, options):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from bigjax import cpu
  from bigjax.cpu import fused as cpu_fused
  from bigjax.cpu import xla_options
  from bigjax.models import seq2seq, transformer
  x, g, mem, labels, logits_g = (jnp.asarray(arrays[k]) for k in ('x', 'g', 'mem', 'labels', 'logits_g'))
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  valid = jnp.ones((B, T), bool)
  parts, unsafe = {}, {}

  def add(name, f, args, cotangent):
    def step(*args):
      out, vjp = jax.vjp(f, *args)
      return vjp(cotangent if cotangent is not None else jnp.ones_like(out))
    jitted = jax.jit(step, compiler_options=options)
    unsafe[name] = xla_options.unsafe_onednn_fusions(jitted.lower(*args).compile().as_text())
    if options and unsafe[name]:  # it may abort the process: not run (the train step falls back)
      return
    parts[name] = lambda: jax.block_until_ready(jitted(*args))

  def task_loss(logits, labels):  # bigjax/tasks/seq2seq.py's loss, label smoothing 0
    one_hot = jax.nn.one_hot(labels, V)
    weights = (labels != 0).astype(jnp.float32)
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy(logits, one_hot) * weights).sum() / count
    return loss + 0 * (correct * weights).sum()

  def int_loss(logits, labels):
    weights = (labels != 0).astype(jnp.float32)
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return (nll * weights).sum() / count + 0 * (correct * weights).sum()

  logits = jnp.asarray(arrays['logits'])
  add('loss', task_loss, (logits, labels), None)
  add('loss_int', int_loss, (logits, labels), None)
  embedding = jnp.asarray(arrays['embedding'])
  add('unembed', lambda x, e: jnp.einsum('btd,vd->btv', x, e), (x, embedding), logits_g)
  add('embed', lambda e, labels: jnp.take(e, labels, axis=0), (embedding, labels), g)

  kw = dict(num_heads=HEADS, head_dim=D // HEADS, mlp_hidden=4 * D, mlp='gelu', norm='layernorm',
            dropout=0.0, dtype=jnp.float32, use_rope=False)
  enc = transformer.Block(num_kv_heads=HEADS, causal=False, **kw)
  p = enc.init(jax.random.key(0), x, positions, valid)
  add('encoder_block', lambda p, x: enc.apply(p, x, positions, valid), (p, x), g)

  class DecoderPart(nn.Module):
    @nn.compact
    def __call__(self, x, memory):
      # As TransformerSeq2Seq computes them (one decoder layer's worth).
      fused = cpu.fuse_qkv() and 'project' in seq2seq.MemoryKV.__dataclass_fields__
      kv = seq2seq.MemoryKV(HEADS, D // HEADS, jnp.float32, **({'project': False} if fused else {}),
                            name='memory_kv')(memory)
      if fused:
        kv = (k[0] for k in cpu_fused.memory_kv_projection(memory, *(w[None] for w in kv)))
      key, value = kv
      return seq2seq.DecoderBlock(**kw, name='decoder')(x, positions, key, value, valid)
  dec = DecoderPart()
  p = dec.init(jax.random.key(0), x, mem)
  add('decoder_block', dec.apply, (p, x, mem), g)
  return parts, unsafe


def pytorch_parts(arrays):
  import torch
  import torch.nn.functional as F
  from torch import nn
  t = {k: torch.tensor(v) for k, v in arrays.items()}
  labels = t['labels'].long()
  eps = 1e-6
  layer = dict(d_model=D, nhead=HEADS, dim_feedforward=4 * D, dropout=0.0, activation=reference.gelu_tanh,
               layer_norm_eps=eps, batch_first=True, norm_first=True, bias=False)
  enc = reference._with_biased_norms(nn.TransformerEncoderLayer(**layer), D, eps).train()
  dec = reference._with_biased_norms(nn.TransformerDecoderLayer(**layer), D, eps).train()
  causal = nn.Transformer.generate_square_subsequent_mask(T)
  embedding = t['embedding'].requires_grad_()
  logits = t['logits'].requires_grad_()
  x, mem = t['x'].requires_grad_(), t['mem'].requires_grad_()

  def run(f, *tensors, modules=(), cotangent=None):
    def go():
      for m in modules:
        m.zero_grad(set_to_none=True)
      for a in tensors:
        a.grad = None
      out = f()
      out.backward(cotangent) if cotangent is not None else out.backward()
    return go
  loss = lambda: F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)  # noqa: E731
  return {
      'loss': run(loss, logits),
      'loss_int': run(loss, logits),
      'unembed': run(lambda: F.linear(x, embedding), x, embedding, cotangent=t['logits_g']),
      'embed': run(lambda: F.embedding(labels, embedding), embedding, cotangent=t['g']),
      'encoder_block': run(lambda: enc(x), x, modules=(enc,), cotangent=t['g']),
      'decoder_block': run(lambda: dec(x, mem, tgt_mask=causal, tgt_is_causal=True), x, mem, modules=(dec,),
                           cotangent=t['g']),
  }


def main(argv=None) -> dict:
  args = parse_args(argv)
  reference.set_threads(args.threads)
  import numpy as np

  from bigjax.cpu import xla_options
  rng = np.random.default_rng(0)
  arrays = {k: rng.standard_normal(s, dtype=np.float32) for k, s in
            (('x', (B, T, D)), ('g', (B, T, D)), ('mem', (B, T, D)), ('logits', (B, T, V)),
             ('logits_g', (B, T, V)))}
  arrays['embedding'] = 0.02 * rng.standard_normal((V, D), dtype=np.float32)
  arrays['labels'] = rng.integers(4, V, (B, T), dtype=np.int32)
  contenders = {}
  for who, options in (('xla', {}), ('onednn', xla_options.ONEDNN)):
    contenders[who], unsafe = bigjax_parts(arrays, options)
    if who == 'onednn':
      refused = {k: v for k, v in unsafe.items() if v}
      print('onednn fusions the step would refuse (those parts not run):', refused, flush=True)
  contenders['pytorch'] = pytorch_parts(arrays)
  names = [n for n in contenders['xla'] if not args.parts or n in args.parts.split(',')]
  for parts in contenders.values():
    for name in names:
      if name in parts:
        parts[name]()  # compile, allocate
  ms = {who: {name: [] for name in names} for who in contenders}
  for round_ in range(args.rounds):
    for name in names:
      for who, parts in contenders.items():
        if name not in parts:
          ms[who][name].append(float('nan'))
          continue
        start = time.perf_counter()
        for _ in range(args.calls):
          parts[name]()
        ms[who][name].append((time.perf_counter() - start) / args.calls * 1e3)
    print(f'round {round_ + 1}/{args.rounds} (xla/onednn/pytorch ms): ' + ', '.join(
        f'{n} ' + '/'.join(f'{ms[w][n][-1]:.1f}' for w in contenders) for n in names), flush=True)
  summary = {name: {**{f'{w}_ms': round(statistics.median(ms[w][name]), 2) for w in contenders},
                    **{f'ratio_{w}': round(reference.median_ratio(ms['pytorch'][name], ms[w][name]), 3)
                       for w in ('xla', 'onednn')}} for name in names}
  print(json.dumps(summary))
  return summary


if __name__ == '__main__':
  main()
