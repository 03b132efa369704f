"""Metrics agree with scikit-learn; losses have their textbook values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from bigjax import losses, metrics


@pytest.mark.parametrize('num_classes', [2, 5])
def test_metrics_match_sklearn(num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(0, num_classes, 500)
  preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, num_classes, 500))
  # Split into two masked halves, as eval batches with padding are summed.
  mask = np.ones(500, np.int32)
  mask[-37:] = 0
  counts = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), num_classes, jnp.asarray(mask))
  got = metrics.from_confusion(np.asarray(counts))
  y, p = labels[:-37], preds[:-37]
  np.testing.assert_array_equal(got['confusion_matrix'], skm.confusion_matrix(y, p))
  assert got['accuracy'] == pytest.approx(skm.accuracy_score(y, p))
  average = 'binary' if num_classes == 2 else 'macro'
  for name, fn in (('precision', skm.precision_score), ('recall', skm.recall_score), ('f1', skm.f1_score)):
    assert got[name] == pytest.approx(fn(y, p, average=average)), name
    assert got[f'{name}_macro'] == pytest.approx(fn(y, p, average='macro')), name
    np.testing.assert_allclose(got[f'per_class_{name}'], fn(y, p, average=None))


def test_class_never_predicted_scores_zero_not_nan():
  got = metrics.from_confusion(np.array([[3, 0], [2, 0]]))
  assert got['per_class_precision'].tolist() == [0.6, 0.0]
  # Class 0: precision 3/5, recall 1, F1 0.75; class 1 (never predicted): 0, so the macro mean is 0.375.
  assert got['f1'] == 0.0 and got['f1_macro'] == pytest.approx(0.375)
  labels, predictions = [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]
  assert got['f1_macro'] == pytest.approx(skm.f1_score(labels, predictions, average='macro', zero_division=0))


def test_losses():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  one_hot = jnp.array([[1.0, 0.0, 0.0]])
  expected_ce = -jax.nn.log_softmax(logits)[0, 0]
  assert losses.softmax_cross_entropy(logits, one_hot)[0] == pytest.approx(float(expected_ce))
  assert losses.mse(logits, one_hot)[0] == pytest.approx((1 + 0 + 1) / 3)
  sig = jax.nn.sigmoid(logits[0])
  bce = -(np.log(sig[0]) + np.log(1 - sig[1]) + np.log(1 - sig[2]))
  assert losses.binary_cross_entropy(logits, one_hot)[0] == pytest.approx(float(bce), rel=1e-5)
  assert losses.mse(logits.astype(jnp.bfloat16), one_hot).dtype == jnp.float32


def test_classification_task_loss_choices_and_masking():
  import ml_collections

  from bigjax import tasks
  from bigjax.config import base_config
  dataset = ml_collections.ConfigDict({'num_classes': 3})
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
  batch = {'label': jnp.array([0, 2]), 'mask': jnp.array([1, 0])}
  config = base_config().task
  config.label_smoothing = 0.3
  task = tasks.build(config, dataset)
  smoothed = jnp.array([0.8, 0.1, 0.1])
  loss, train_metrics = task.loss(logits, batch)
  expected = (-(smoothed * jax.nn.log_softmax(logits[0])).sum()
              - (jnp.array([0.1, 0.1, 0.8]) * jax.nn.log_softmax(logits[1])).sum()) / 2
  assert loss == pytest.approx(float(expected), rel=1e-6)
  assert train_metrics['accuracy'] == 0.5
  sums = task.eval_sums(logits, batch)  # the second row is padding: it counts for nothing
  summary = task.summarize(jax.device_get(sums))
  assert summary['accuracy'] == 1.0 and sums['count'] == 1
  config.loss, config.label_smoothing = 'mse', 0.0
  loss, _ = tasks.build(config, dataset).loss(logits, batch)
  assert loss == pytest.approx(float((losses.mse(logits[:1], jnp.eye(3)[:1])[0]
                                       + losses.mse(logits[1:], jnp.eye(3)[2:])[0]) / 2))
