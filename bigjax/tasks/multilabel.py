"""Multi-label classification: a batch is {'inputs', 'label'}, 'label' a (B, classes) 0/1 multi-hot
vector (Pascal VOC's objects in a photo; the digits on a canvas). One sigmoid per class, trained with
binary cross-entropy.

Judged, as VOC is, by average precision per class and its mean (mAP), from scikit-learn's
`average_precision_score` on the host over every example of the split: AP ranks the whole split, so
it cannot be summed batch by batch. The eval step's scores come back through the task's `generate`
and `score` (the hooks a generating task uses). Classes with no positive example in a split have no
AP and are left out of the mean.
"""

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import losses


def check_config(task_config) -> None:
  del task_config  # nothing to choose: the loss is always the per-class sigmoid


def make(task_config, dataset):
  del task_config, dataset

  def loss(logits, batch):
    value = losses.binary_cross_entropy(logits, batch['label']).mean()
    exact = jnp.all((logits > 0) == (batch['label'] > 0.5), axis=-1).mean()
    return value, {'loss': value, 'exact_match': exact}

  def eval_sums(logits, batch):
    mask = batch['mask'].astype(jnp.float32)
    exact = jnp.all((logits > 0) == (batch['label'] > 0.5), axis=-1)
    return {'loss_sum': (losses.binary_cross_entropy(logits, batch['label']) * mask).sum(),
            'exact_sum': (exact * mask).sum(), 'count': mask.sum()}

  def summarize(sums):
    count = max(float(sums['count']), 1.0)
    return {'loss': float(sums['loss_sum'] / count), 'exact_match': float(sums['exact_sum'] / count)}

  def scores(model, variables, batch):
    return jax.nn.sigmoid(model.apply(variables, batch['inputs'], train=False).astype(jnp.float32))

  def score(batches, outputs):
    real = [b['mask'].astype(bool) for b in batches]
    labels = np.concatenate([b['label'][m] for b, m in zip(batches, real)])
    probabilities = np.concatenate([o[m] for o, m in zip(outputs, real)])
    return mean_average_precision(labels, probabilities), []

  return {'loss': loss, 'eval_sums': eval_sums, 'summarize': summarize, 'generate': scores, 'score': score}


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> dict:
  """{'map': the mean over classes with a positive, 'per_class_ap': each class's AP (NaN: none)}."""
  from sklearn.metrics import average_precision_score  # noqa: PLC0415 (host-side, at eval only)
  labels = np.asarray(labels) > 0.5
  per_class = np.array([average_precision_score(labels[:, c], scores[:, c]) if labels[:, c].any() else np.nan
                        for c in range(labels.shape[1])])
  return {'map': float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0,
          'per_class_ap': per_class}
