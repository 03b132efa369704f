"""Small building blocks shared by the model files: annotated layers, activations."""

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': nn.tanh,
    'sigmoid': nn.sigmoid,
    'gelu': nn.gelu,
    'silu': nn.silu,
}


def token_matmul(x, w, precision=None, preferred_element_type=None):
  """x (..., d_in) @ w (d_in, d_out): every leading axis of x merged into one token axis first.

  Same math, same bits as a 3-D dot, but faster on CPU: autodiff of a (batch, length, d_in) dot
  gives a weight-gradient dot with both operands transposed, which XLA:CPU runs on its slow
  Eigen path and feeds through a transposing copy; on a 2-D x every forward and backward matmul
  is a plain GEMM (docs/performance.md has the figures). Leading axes are major, so a batch
  sharded over the mesh stays sharded through the reshape.
  """
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())), precision=precision,
                          preferred_element_type=preferred_element_type)
  return y.reshape(x.shape[:-1] + w.shape[1:])


def token_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's dot_general, routed through token_matmul (Dense contracts lhs's last axis)."""
  assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
  return token_matmul(lhs, rhs, precision, preferred_element_type)


def dense(features: int, axes: tuple[str, str], name: str | None = None) -> nn.Dense:
  """A Dense layer whose kernel and bias carry logical axis names for sharding."""
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
      name=name)


def conv(features: int, kernel: int, strides: int = 1, use_bias: bool = True,
         name: str | None = None) -> nn.Conv:
  """A 2-D 'SAME' convolution; its kernel is (h, w, conv_in, conv_out)."""
  return nn.Conv(
      features, (kernel, kernel), strides=strides, padding='SAME', use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
      name=name)


def batch_norm(train: bool, name: str | None = None, zero_scale: bool = False) -> nn.BatchNorm:
  """BatchNorm whose running statistics live in the `batch_stats` collection.

  Under jit with a sharded batch, the mean and variance are over the global
  batch, so statistics do not depend on how many devices share the batch.
  zero_scale: the scale starts at 0 (a residual branch's last norm: the block starts as its shortcut).
  """
  scale_init = nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init()
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      scale_init=nn.with_logical_partitioning(scale_init, ('conv_out',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
      name=name)


POOLINGS = ('last', 'mean', 'max')


def masked_pool(states, valid, mode: str, last=None):
  """Pools (B, T, F) states over the real tokens only (valid (B, T)), so padding never counts.

  'mean' and 'max' read states; 'last' returns `last`, the recurrent state after the last real
  token, which a masked recurrence computes itself (a sequence with no real token pools to 0).
  """
  if mode == 'last':
    return last
  mask = valid[..., None]
  if mode == 'mean':
    return jnp.sum(jnp.where(mask, states, 0), axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
  pooled = jnp.max(jnp.where(mask, states, -jnp.inf), axis=1)
  return jnp.where(jnp.any(valid, axis=1)[:, None], pooled, 0)
