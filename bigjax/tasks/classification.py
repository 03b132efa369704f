"""Classification: a batch is {'inputs', 'label'}; the model outputs one logit per class.

'label' is a class id (B,), or soft targets (B, classes) that sum to 1 (mixup and cutmix make them,
bigjax/tasks/mixing.py). Eval reads class ids; with more than five classes it also reports top-5
accuracy (ImageNet's second figure).
"""

import jax
import jax.numpy as jnp
import optax

from bigjax import losses, metrics
from bigjax.config import ConfigError, check, check_choice
from bigjax.tasks import mixing

LOSSES = {
    'cross_entropy': losses.softmax_cross_entropy,
    'mse': losses.mse,
    'binary_cross_entropy': losses.binary_cross_entropy,
}


def check_config(task_config) -> None:
  check_choice(task_config, 'task', 'loss', LOSSES)
  check(0 <= task_config.label_smoothing < 1, 'task.label_smoothing', task_config.label_smoothing,
        'use a value in [0, 1)')
  for field in ('mixup', 'cutmix'):
    check(task_config.get(field, 0.0) >= 0, f'task.{field}', task_config.get(field),
          'use a Beta(alpha, alpha) alpha > 0, or 0 for off')


def make(task_config, dataset):
  num_classes = dataset.num_classes

  loss_fn = LOSSES[task_config.loss]

  def per_example_loss(logits, labels):
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if task_config.label_smoothing:  # smoothed targets, whatever the loss
      targets = optax.smooth_labels(targets, task_config.label_smoothing)
    return loss_fn(logits, targets)

  def loss(logits, batch):
    value = per_example_loss(logits, batch['label']).mean()
    # Soft targets: the class with the larger share.
    labels = batch['label'] if batch['label'].ndim == 1 else batch['label'].argmax(-1)
    accuracy = (logits.argmax(-1) == labels).mean()
    return value, {'loss': value, 'accuracy': accuracy}

  def eval_sums(logits, batch):
    mask = batch['mask'].astype(jnp.float32)
    sums = {
        'loss_sum': (per_example_loss(logits, batch['label']) * mask).sum(),
        'count': mask.sum(),
        'confusion': metrics.confusion_matrix(batch['label'], logits.argmax(-1), num_classes, mask),
    }
    if num_classes > 5:
      sums['top5_sum'] = (metrics.in_top_k(logits, batch['label'], 5) * mask).sum()
    return sums

  def summarize(sums):
    count = max(float(sums['count']), 1.0)
    out = {'loss': float(sums['loss_sum'] / count), **metrics.from_confusion(sums['confusion'])}
    if 'top5_sum' in sums:
      out['top5_accuracy'] = float(sums['top5_sum'] / count)
    return out

  def distill_logits(logits, batch):
    return logits, jnp.ones(logits.shape[:1], jnp.float32)

  made = {'loss': loss, 'eval_sums': eval_sums, 'summarize': summarize, 'distill_logits': distill_logits}
  mixup, cutmix = task_config.get('mixup', 0.0), task_config.get('cutmix', 0.0)
  if (mixup or cutmix) and dataset.tokenizer is not None:
    raise ConfigError(f'config.task.mixup={mixup} / task.cutmix={cutmix} is invalid: they mix images, and '
                      f'{dataset.name!r} is text: use 0')
  augment = mixing.make(num_classes, mixup, cutmix)
  return {**made, 'augment': augment} if augment else made
