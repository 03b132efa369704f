"""Data: the offline digits builder, the grain pipeline, and TFDS datasets under mock_data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from bigjax import data
from bigjax.config import ConfigError, base_config
from bigjax.data import pipeline


def _load(name='digits', data_dir=None, in_memory=True):
  c = base_config().data
  c.name, c.data_dir, c.in_memory = name, data_dir, in_memory
  return data.load(c)


def test_digits_fixed_disjoint_split(data_dir):
  ds = _load(data_dir=data_dir)
  sizes = {k: len(v) for k, v in ds.splits.items()}
  assert sizes == {'train': 1257, 'eval': 180, 'test': 360}
  images, labels = load_digits(return_X_y=True)
  order = np.random.RandomState(0).permutation(len(labels))
  rows = {'test': order[:360], 'eval': order[360:540], 'train': order[540:]}
  for split, idx in rows.items():  # record i is sklearn row order[i]: fixed, disjoint, complete
    got = ds.splits[split].read(np.arange(len(idx)))
    np.testing.assert_array_equal(got['label'], labels[idx])
    np.testing.assert_array_equal(got['image'][..., 0], np.round(images[idx].reshape(-1, 8, 8) * 255 / 16))


def test_on_disk_and_in_memory_reads_agree(data_dir):
  a, b = _load(data_dir=data_dir), _load(data_dir=data_dir, in_memory=False)
  idx = [5, 0, 77, 5]
  for k, v in a.splits['eval'].read(idx).items():
    np.testing.assert_array_equal(v, b.splits['eval'].read(idx)[k])


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_iterator_is_seeded_reshuffles_epochs_and_resumes(data_dir):
  ds = _load(data_dir=data_dir)
  split, prep = ds.splits['train'], ds.preprocess
  a = _take(pipeline.train_iterator(split, prep, 419, seed=3), 6)  # 3 batches = 1 epoch of 1257
  b = _take(pipeline.train_iterator(split, prep, 419, seed=3), 6)
  c = _take(pipeline.train_iterator(split, prep, 419, seed=4), 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
  assert not np.array_equal(a[0]['label'], c[0]['label'])
  epoch1 = np.concatenate([x['label'] for x in a[:3]])
  epoch2 = np.concatenate([x['label'] for x in a[3:]])
  assert np.bincount(epoch1).tolist() == np.bincount(split.read(np.arange(1257))['label']).tolist()
  assert not np.array_equal(epoch1, epoch2) and sorted(epoch1) == sorted(epoch2)
  # grain's iterator state: restoring it continues with exactly the same batches.
  it = pipeline.train_iterator(split, prep, 419, seed=3)
  _take(it, 2)
  state = it.get_state()
  fresh = pipeline.train_iterator(split, prep, 419, seed=3)
  fresh.set_state(state)
  for x, y in zip(_take(fresh, 4), a[2:]):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])


def test_eval_batches_cover_each_example_once(data_dir):
  ds = _load(data_dir=data_dir)
  batches = list(pipeline.eval_batches(ds.splits['eval'], ds.preprocess, 64))
  assert [b['inputs'].shape[0] for b in batches] == [64, 64, 64]
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 180 and mask[:180].all()
  labels = np.concatenate([b['label'] for b in batches])[:180]
  np.testing.assert_array_equal(labels, ds.splits['eval'].read(np.arange(180))['label'])


def test_preprocess_scales_images():
  batch = data.images.to_inputs({'image': np.array([[[[0]], [[255]]]], np.uint8), 'label': np.array([7])})
  np.testing.assert_allclose(batch['inputs'].ravel(), [-2.0, 2.0])
  assert batch['inputs'].dtype == np.float32 and batch['label'].dtype == np.int32


@pytest.mark.parametrize('name, shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_datasets_through_the_same_code(name, shape):
  with tfds.testing.mock_data(num_examples=24):
    ds = _load(name)
    assert ds.num_classes == 10 and set(ds.splits) == {'train', 'eval', 'test'}
    batch = next(pipeline.train_iterator(ds.splits['train'], ds.preprocess, 8, seed=0))
    assert batch['inputs'].shape == (8, *shape) and batch['inputs'].dtype == np.float32
    assert batch['label'].min() >= 0 and batch['label'].max() < 10


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(ConfigError, match='tfds build cifar10 --file_format=array_record'):
    _load('cifar10', data_dir=str(tmp_path))
