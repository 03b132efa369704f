"""Per-example losses. Tasks average them (with masks); all return float32.

The tutorial compares MSE and cross-entropy for classification, so each loss
here takes raw model outputs and (possibly smoothed) one-hot targets of the same shape.
"""

import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, targets):
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mse(outputs, targets):
  """Mean over the last axis of the squared error: regression onto one-hot targets."""
  return jnp.mean(jnp.square(outputs.astype(jnp.float32) - targets), axis=-1)


def binary_cross_entropy(logits, targets):
  """Independent sigmoid per output (one-vs-rest), summed over the last axis."""
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).sum(axis=-1)
