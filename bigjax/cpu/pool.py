"""The mean over one axis, with a gradient that oneDNN's matmul fusion cannot swallow.

A ViT's global average pooling feeds its head, so in backward the head's input-gradient matmul is
followed by the mean's division by the patch count. XLA fuses the two into one oneDNN fusion, which
this XLA computes wrongly for a long contraction (xla_options); xla_options refuses it, and the whole
step falls back to XLA's own matmuls. Here the gradient is multiplied by a vector of 1/n, one per
pooled position, that an optimization barrier hides from XLA's simplifier: a constant it would fold
to one scalar and move next to the matmul, where the fusion takes it. Forward and gradient are the
plain mean's (tested). Applies: on the CPU backend; elsewhere the plain mean."""

import functools

import jax
import jax.numpy as jnp

from bigjax import sharding


def mean(x, axis: int):
  """x.mean(axis)."""
  if sharding.platform() != 'cpu':
    return x.mean(axis)
  return _mean(x, axis % x.ndim, x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _mean(x, axis, shape):
  del shape
  return x.mean(axis)


def _forward(x, axis, shape):
  del shape
  return x.mean(axis), None


def _backward(axis, shape, _, g):
  weights = jnp.full([n if i == axis else 1 for i, n in enumerate(shape)], 1 / shape[axis], g.dtype)
  return (jnp.expand_dims(g, axis) * jax.lax.optimization_barrier(weights),)


_mean.defvjp(_forward, _backward)
