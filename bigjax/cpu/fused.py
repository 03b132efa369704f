"""Projections fused into one matmul for XLA:CPU's oneDNN fusion (bigjax/cpu/xla_options.py).

Matmuls that share an input have input gradients that XLA sums into one fusion of several dots,
which this XLA's oneDNN fusion cannot run (xla_options.jit_and_compile then falls back to XLA's
own matmuls for the whole step). Computed as one matmul over the concatenated weights, they have one
input-gradient dot, and a wider GEMM forward. The parameters stay separate (the same tree as the
unfused layout), so this is a choice of computation only and a checkpoint restores either way.
"""

import math

import jax
import jax.numpy as jnp


def qkv_projection(x, query, key, value):
  """(x @ query, x @ key, x @ value) as one matmul: x (..., D), query (D, N, H), key and value
  (D, K, H) -> (..., N, H), (..., K, H), (..., K, H).

  The weights are concatenated within each key/value head (the query heads of its group, then its
  key and its value), so the fused matmul's output axis is (K, N // K + 2, H).
  """
  d_model, kv_heads, head_dim = key.shape
  group, tokens = query.shape[1] // kv_heads, x.shape[:-1]
  w = jnp.concatenate([k.reshape(d_model, kv_heads, -1) for k in (query, key, value)], axis=-1)
  # bigjax.models.layers.token_matmul (which this module cannot import: models import it)
  qkv = jax.lax.dot_general(x.reshape(-1, d_model), w, (((1,), (0,)), ((), ())))
  qkv = qkv.reshape(tokens + (kv_heads, group + 2, head_dim))
  # lax.split, not three slices: its gradient is one concatenation, where the slices' is three
  # zero-padded copies of the whole projection summed (XLA:CPU does not fuse them away).
  q, k, v = jax.lax.split(qkv, (group, 1, 1), axis=-2)
  return q.reshape(tokens + query.shape[1:]), k[..., 0, :], v[..., 0, :]


def memory_kv_projection(x, key, value):
  """Every decoder layer's cross-attention keys and values of the encoder output x, as one matmul:
  x (..., D), key and value (L, D, N, H) stacked over the L decoder layers -> keys and values
  (L, ..., N, H), what L pairs of matmuls x @ key[i], x @ value[i] give.

  All 2 L matmuls read x, so unfused their input gradients are 2 L summed dots (see above).
  """
  parts = matmuls(x, *[w[i] for i in range(key.shape[0]) for w in (key, value)])
  return jnp.stack(parts[0::2]), jnp.stack(parts[1::2])


def matmuls(x, *kernels):
  """(x @ w for w in kernels) as one matmul: x (..., D), each kernel (D, ...) -> (..., kernel.shape[1:]).
  For matmuls that read one input: the encoder-decoder's memory keys and values, and its output
  with a copy head (logits, copy queries and gate). lax.split, as above: one concatenation in
  backward."""
  d_model, tokens = x.shape[-1], x.shape[:-1]
  w = jnp.concatenate([k.reshape(d_model, -1) for k in kernels], axis=1)
  out = jax.lax.dot_general(x.reshape(-1, d_model), w, (((1,), (0,)), ((), ())))
  parts = jax.lax.split(out, [math.prod(k.shape[1:]) for k in kernels], axis=1)
  return tuple(part.reshape(tokens + k.shape[1:]) for part, k in zip(parts, kernels))
