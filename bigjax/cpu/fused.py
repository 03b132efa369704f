"""Projections fused into one matmul for XLA:CPU's oneDNN fusion (bigjax/cpu/xla_options.py).

Matmuls that share an input have input gradients that XLA sums into one fusion of several dots,
which this XLA's oneDNN fusion cannot run (xla_options.jit_and_compile then falls back to XLA's
own matmuls for the whole step). Computed as one matmul over the concatenated weights, they have one
input-gradient dot, and a wider GEMM forward. The parameters stay separate (the same tree as the
unfused layout), so this is a choice of computation only and a checkpoint restores either way.
"""

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
  q = qkv[..., :group, :].reshape(tokens + query.shape[1:])
  return q, qkv[..., group, :], qkv[..., group + 1, :]
