"""Classification: a batch is {'inputs', 'label'}; the model outputs one logit per class."""

import jax
import jax.numpy as jnp
import optax

from bigjax import losses, metrics
from bigjax.config import check, check_choice

LOSSES = {
    'cross_entropy': losses.softmax_cross_entropy,
    'mse': losses.mse,
    'binary_cross_entropy': losses.binary_cross_entropy,
}


def check_config(task_config) -> None:
  check_choice(task_config, 'task', 'loss', LOSSES)
  check(0 <= task_config.label_smoothing < 1, 'task.label_smoothing', task_config.label_smoothing,
        'use a value in [0, 1)')


def make(task_config, dataset):
  num_classes = dataset.num_classes

  loss_fn = LOSSES[task_config.loss]

  def per_example_loss(logits, labels):
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if task_config.label_smoothing:  # smoothed targets, whatever the loss
      targets = optax.smooth_labels(targets, task_config.label_smoothing)
    return loss_fn(logits, targets)

  def loss(logits, batch):
    value = per_example_loss(logits, batch['label']).mean()
    accuracy = (logits.argmax(-1) == batch['label']).mean()
    return value, {'loss': value, 'accuracy': accuracy}

  def eval_sums(logits, batch):
    mask = batch['mask'].astype(jnp.float32)
    return {
        'loss_sum': (per_example_loss(logits, batch['label']) * mask).sum(),
        'count': mask.sum(),
        'confusion': metrics.confusion_matrix(batch['label'], logits.argmax(-1), num_classes, mask),
    }

  def summarize(sums):
    return {'loss': float(sums['loss_sum'] / max(float(sums['count']), 1.0)),
            **metrics.from_confusion(sums['confusion'])}

  return loss, eval_sums, summarize
