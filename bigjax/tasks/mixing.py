"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) of a train batch, on the device.

Each example is mixed with its partner in the global batch reversed, with one weight per step drawn
from Beta(alpha, alpha) with the step's key. The partner and the weight depend on the step alone, not on
how the batch is split over devices or hosts, so a resumed run mixes exactly as an uninterrupted one.
Targets become soft: (B, classes) float32, weight * own one-hot + (1 - weight) * partner's.
"""

import jax
import jax.numpy as jnp


def _soft(label, num_classes: int):
  return label if label.ndim == 2 else jax.nn.one_hot(label, num_classes, dtype=jnp.float32)


def mixup(images, targets, key, alpha: float):
  weight = jax.random.beta(key, alpha, alpha)
  mixed = weight * images + (1 - weight) * images[::-1]
  return mixed.astype(images.dtype), weight * targets + (1 - weight) * targets[::-1]


def cutmix(images, targets, key, alpha: float):
  """A box of the partner's image pasted over each image; the targets mix by the box's true area
  (the box is clipped at the edges, so its area can be smaller than 1 - weight asked for)."""
  weight_key, y_key, x_key = jax.random.split(key, 3)
  weight = jax.random.beta(weight_key, alpha, alpha)
  height, width = images.shape[1:3]
  cut = jnp.sqrt(1 - weight)
  cy, cx = jax.random.randint(y_key, (), 0, height), jax.random.randint(x_key, (), 0, width)
  half_h, half_w = (cut * height / 2).astype(jnp.int32), (cut * width / 2).astype(jnp.int32)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= cy - half_h) & (rows < cy + half_h) & (cols >= cx - half_w) & (cols < cx + half_w)
  mixed = jnp.where(box[None, :, :, None], images[::-1], images)
  kept = 1 - box.mean()
  return mixed, kept * targets + (1 - kept) * targets[::-1]


def make(num_classes: int, mixup_alpha: float, cutmix_alpha: float):
  """augment(batch, key) for the task: batch['inputs'] images mixed, batch['label'] soft."""
  if not mixup_alpha and not cutmix_alpha:
    return None

  def augment(batch, key):
    images, targets = batch['inputs'], _soft(batch['label'], num_classes)
    choose_key, mix_key = jax.random.split(key)
    if mixup_alpha and cutmix_alpha:  # one of the two per step, each half the time
      images, targets = jax.lax.cond(
          jax.random.bernoulli(choose_key), lambda: mixup(images, targets, mix_key, mixup_alpha),
          lambda: cutmix(images, targets, mix_key, cutmix_alpha))
    elif mixup_alpha:
      images, targets = mixup(images, targets, mix_key, mixup_alpha)
    else:
      images, targets = cutmix(images, targets, mix_key, cutmix_alpha)
    return {**batch, 'inputs': images, 'label': targets}
  return augment
