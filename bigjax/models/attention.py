"""Attention: the one function every Transformer block calls, and the implementation it picks.

`attention` builds the mask (padding, causality, the slots of a KV cache) and hands q, k, v to the
implementation for the backend: on CPU, bigjax.cpu.attention's heads-major einsums; elsewhere,
jax.nn.dot_product_attention, which is also the reference every other path is tested against.
"""

import jax
import jax.numpy as jnp

from bigjax.cpu import attention as cpu_attention


def attention(q, k, v, valid, *, causal: bool, first=0, blocks: int = 1):
  """Attention of q (B, T, heads, head_dim) over k, v (B, S, kv_heads, head_dim).

  Query i sits at key slot first + i and sees slot j if j is a real token (valid (B, S)) and,
  when causal, j <= first + i. With causal, first == 0 and blocks > 1, the queries are cut into
  `blocks` equal chunks and chunk c attends only to the keys up to its own end: the same
  numbers, but the fully masked upper-right blocks are never computed (two blocks: a quarter
  fewer attention FLOPs).
  """
  t = q.shape[1]
  if blocks > 1 and causal and first == 0 and t % blocks == 0 and k.shape[1] == t:
    size = t // blocks
    chunks = []
    for c in range(blocks):
      end = (c + 1) * size
      chunks.append(attention(q[:, c * size:end], k[:, :end], v[:, :end], valid[:, :end], causal=True,
                              first=c * size))
    return jnp.concatenate(chunks, axis=1)
  mask = valid[:, None, None, :]
  if causal:  # slots are in time order, so this is the causal mask
    mask &= (jnp.arange(k.shape[1])[None, :] <= first + jnp.arange(t)[:, None])[None, None]
  return implementation(jax.default_backend())(q, k, v, mask=mask)


def reference(q, k, v, mask):
  """XLA's attention, for any backend: jax.nn.dot_product_attention (cuDNN's fused kernel only
  where asked for with implementation='cudnn')."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


def implementation(backend: str):
  """The attention core, (q, k, v, mask (B, 1, T, S)) -> (B, T, heads, head_dim), for a backend."""
  if backend == 'cpu':
    return cpu_attention.heads_major_attention
  return reference
