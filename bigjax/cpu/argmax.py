"""argmax(logits, -1) == labels without the argmax, for accuracy over a large vocabulary.

XLA:CPU runs argmax as a variadic (value, index) reduction that it does not vectorize: over the
seq2seq benchmark's logits (4,096 tokens x 4,096 ids) it takes about 60 ms on one core, as long
as the loss and its gradient together. The same answer from a max, a gather and a boolean
reduction takes about 19 ms alone, and shares its max with the loss's softmax in a train step
(2% of the seq2seq step, docs/performance.md). Other backends keep the plain argmax."""

import jax.numpy as jnp

from bigjax import sharding


def argmax_equals(logits, labels):
  """(logits.argmax(-1) == labels) for logits (..., V) and integer labels (...) in [0, V).

  On CPU: the label's logit is the row's maximum and no earlier id's equals it (argmax picks the
  first maximum). Where a row holds a NaN, argmax points at it; this says False there instead."""
  if sharding.platform() != 'cpu':
    return logits.argmax(-1) == labels
  top = logits.max(axis=-1, keepdims=True)
  label_logit = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  earlier = jnp.arange(logits.shape[-1]) < labels[..., None]
  # A boolean reduction: XLA:CPU vectorizes it, unlike an integer min or argmax's (value, index) one.
  tie_before = jnp.any((logits == top) & earlier, axis=-1)
  return (label_logit == top[..., 0]) & ~tie_before
