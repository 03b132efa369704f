"""Attention on XLA:CPU: what jax.nn.dot_product_attention computes, laid out for CPU matmuls.

bigjax/models/attention.py picks this on the CPU backend. XLA:CPU lowers dot_product_attention
to time-major einsums; with the heads moved in front of time it runs both attention matmuls as
plain batched GEMMs over (batch, heads) instead, faster forward and backward at the LM's shapes
(docs/performance.md). tests/test_lm.py checks values and gradients against the reference.
"""

import jax
import jax.numpy as jnp


def heads_major_attention(q, k, v, mask):
  """jax.nn.dot_product_attention(q, k, v, mask=mask) for q (B, T, N, H), k and v (B, S, K, H)
  and a boolean mask (B, 1, T, S), the same for every head, with the heads moved in front of time
  first. Query head n uses key/value head n // (N // K).
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  q = (q * h ** -0.5).reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)  # (B, K, G, T, H)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, K, S, H)
  scores = jnp.einsum('bkgth,bksh->bkgts', q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(mask[:, :, None], scores, -1e30)
  # The softmax, normalized after the values matmul (as flash attention does): the division, and
  # in backward the softmax's row sum, run over head_dim-wide rows instead of key-length ones.
  # The max only keeps exp in range: no gradient through it.
  weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
  out = jnp.einsum('bkgts,bksh->bkgth', weights.astype(v.dtype), v)  # (B, K, G, T, H)
  out = out / weights.sum(axis=-1, keepdims=True).astype(v.dtype)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
