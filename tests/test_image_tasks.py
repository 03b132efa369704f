"""Image classification's task side: mixup and cutmix with soft targets, top-5 accuracy, and the
multi-label task's mean average precision (scikit-learn's), on the offline multi-label digits."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from bigjax import data, metrics, tasks
from bigjax.config import ConfigError, base_config
from bigjax.data import digits_multilabel
from bigjax.tasks import mixing, multilabel
from helpers import REPO, read_metrics, run_main


def _constant_images(n=8, size=16):
  """Image i is the constant i + 1: any pixel says which example it came from."""
  return jnp.broadcast_to(jnp.arange(1.0, n + 1)[:, None, None, None], (n, size, size, 3))


@pytest.mark.parametrize('kind', ['mixup', 'cutmix'])
def test_mixing_weights_pixels_and_targets_alike(kind):
  images, labels = _constant_images(), jnp.arange(8) % 4
  augment = mixing.make(4, 0.4 if kind == 'mixup' else 0.0, 1.0 if kind == 'cutmix' else 0.0)
  for seed in range(3):
    out = augment({'inputs': images, 'label': labels}, jax.random.key(seed))
    mixed, soft = np.asarray(out['inputs']), np.asarray(out['label'])
    np.testing.assert_allclose(soft.sum(-1), 1, rtol=1e-6)
    own = soft[np.arange(8), np.asarray(labels)]  # label i and its partner's (7 - i) differ
    # The share of each image that is its own equals the weight of its own label.
    if kind == 'mixup':
      share = (mixed[:, 0, 0, 0] - np.arange(8, 0, -1)) / (np.arange(1, 9) - np.arange(8, 0, -1))
    else:
      share = (mixed[..., 0] == np.arange(1, 9)[:, None, None]).mean(axis=(1, 2))
    np.testing.assert_allclose(share, own, atol=1e-5)
    again = augment({'inputs': images, 'label': labels}, jax.random.key(seed))
    np.testing.assert_array_equal(np.asarray(again['inputs']), mixed)  # the key decides everything


_SHARDED_MIXING = """
import jax, jax.numpy as jnp, numpy as np
from bigjax.tasks import mixing
mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
augment = jax.jit(mixing.make(4, 0.4, 1.0))
batch = {'inputs': jnp.broadcast_to(jnp.arange(1.0, 17)[:, None, None, None], (16, 8, 8, 3)),
         'label': jnp.arange(16) % 4}
for seed in range(4):
  whole = augment(batch, jax.random.key(seed))
  split = augment(jax.device_put(batch, jax.NamedSharding(mesh, jax.P('data'))), jax.random.key(seed))
  for key in whole:  # the same partners and weights; XLA may fuse the sums differently (an ulp)
    np.testing.assert_allclose(np.asarray(whole[key]), np.asarray(split[key]), rtol=1e-6)
print('same')
"""


def test_mixing_is_the_same_over_a_sharded_batch():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  result = subprocess.run([sys.executable, '-c', _SHARDED_MIXING], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == 'same', result.stderr[-2000:]


def test_soft_targets_train_and_top5_counts():
  dataset = data.Dataset('x', 10, {}, None)
  task = tasks.build(base_config().task, dataset)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, 10)), jnp.float32)
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 10, 64))
  hard, _ = task.loss(logits, {'label': labels})
  soft, _ = task.loss(logits, {'label': jax.nn.one_hot(labels, 10)})
  assert float(hard) == pytest.approx(float(soft), rel=1e-6)  # one-hot soft targets are the labels
  sums = task.eval_sums(logits, {'label': labels, 'mask': jnp.ones(64)})
  top5 = skm.top_k_accuracy_score(np.asarray(labels), np.asarray(logits), k=5, labels=range(10))
  assert task.summarize(jax.device_get(sums))['top5_accuracy'] == pytest.approx(top5)
  assert float(metrics.in_top_k(logits, labels, 1).mean()) == pytest.approx(
      float((logits.argmax(-1) == labels).mean()))


def test_mean_average_precision_is_sklearns_over_classes_with_positives():
  rng = np.random.default_rng(0)
  labels = (rng.random((200, 5)) < 0.3).astype(np.float32)
  labels[:, 4] = 0  # a class with no positive has no AP: left out of the mean
  scores = np.clip(labels * 0.4 + rng.random((200, 5)) * 0.8, 0, 1)
  got = multilabel.mean_average_precision(labels, scores)
  want = [skm.average_precision_score(labels[:, c], scores[:, c]) for c in range(4)]
  np.testing.assert_allclose(got['per_class_ap'][:4], want)
  assert np.isnan(got['per_class_ap'][4]) and got['map'] == pytest.approx(np.mean(want))


def test_multilabel_digits_compose_labels_from_their_cells():
  images, labels = data.digits.load_images()
  canvases, multi_hot = digits_multilabel.compose(images, labels, 50, np.random.default_rng(0))
  assert canvases.shape == (50, 16, 16, 1) and multi_hot.shape == (50, 10)
  for canvas, hot in zip(canvases, multi_hot):
    cells = [canvas[r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8)]
    drawn = {int(labels[j]) for cell in cells if cell.any()
             for j in np.flatnonzero((images == cell).all(axis=(1, 2, 3)))}
    assert set(np.flatnonzero(hot)) <= drawn and 2 <= sum(cell.any() for cell in cells) <= 4


def _multilabel_run(data_dir, workdir, *overrides):
  result = run_main('--config=experiments/digits_multilabel.py', f'--workdir={workdir}',
                    f'--config.data.data_dir={data_dir}', *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  return read_metrics(str(workdir), 'test')[0]


@pytest.mark.slow  # about 20 s on 2 cores, mostly building the dataset: CI keeps the task's parts
def test_multilabel_digits_learn_from_a_short_run(data_dir, tmp_path):
  test = _multilabel_run(data_dir, tmp_path, '--config.train.steps=300', '--config.train.eval_every=0')
  assert test['map'] >= 0.9 and 0 < test['exact_match'] <= 1


@pytest.mark.slow  # about a minute on 2 cores
def test_multilabel_digits_config_reaches_its_map(data_dir, tmp_path):
  assert _multilabel_run(data_dir, tmp_path)['map'] >= 0.95


def test_mixing_text_is_refused_in_one_line():
  config = base_config().task
  config.mixup = 0.2
  with pytest.raises(ConfigError, match='they mix images'):
    tasks.build(config, data.Dataset('snippets', 10, {}, None, tokenizer=object()))
