"""Image datasets and augmentation: crops, flips, the eval crop, normalization, draws that depend on
(seed, step, row) alone, worker processes, ImageNet and Pascal VOC under mock_data."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from bigjax import data
from bigjax.config import ConfigError, base_config
from bigjax.data import images, pipeline
from helpers import RATES, REPO, assert_resumed, read_metrics, signal_when

AUGMENT = dict(crop='random_resized', image_size=16, crop_scale=(0.08, 1.0), pad=4, flip=True)


def _config(name, in_memory=False, **augment):
  c = base_config()
  c.data.name, c.data.in_memory = name, in_memory
  c.data.augment.update(augment)
  return c


def _images(n, h=40, w=30, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_augmentation_depends_on_seed_step_and_row_alone():
  batch = {'image': _images(8), 'label': np.arange(8)}
  whole = images.augment(batch, 3, 5, np.arange(8), **AUGMENT)['image']
  assert whole.shape == (8, 16, 16, 3) and whole.dtype == np.uint8
  np.testing.assert_array_equal(whole, images.augment(batch, 3, 5, np.arange(8), **AUGMENT)['image'])
  # Two hosts, each with every other row of the global batch, draw what one host draws.
  for rows in (np.arange(0, 8, 2), np.arange(1, 8, 2)):
    part = images.augment({'image': batch['image'][rows]}, 3, 5, rows, **AUGMENT)['image']
    np.testing.assert_array_equal(part, whole[rows])
  for seed, step in ((4, 5), (3, 6)):  # another seed or step draws other crops
    assert not np.array_equal(images.augment(batch, seed, step, np.arange(8), **AUGMENT)['image'], whole)


@pytest.mark.parametrize('height, width', [(40, 30), (30, 200), (500, 20), (7, 7)])
def test_random_resized_boxes_lie_in_the_image(height, width):
  areas, ratios = [], []
  for row in range(300):
    left, top, right, bottom = images.random_resized_box(height, width, images.rng(0, 0, row), (0.08, 1.0))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    areas.append((right - left) * (bottom - top) / (height * width))
    ratios.append((right - left) / (bottom - top))
  assert max(areas) <= 1.0 and min(areas) >= 0.04  # the scale's 0.08, less what rounding takes
  if height == 40:  # a 4:3 image: most tries succeed, so the draws cover the ranges
    assert min(areas) < 0.2 and max(areas) > 0.8 and min(ratios) < 0.85 and max(ratios) > 1.2
  crop = images.random_resized_crop(_images(1, height, width)[0], images.rng(0, 0, 0), 24, (0.08, 1.0))
  assert crop.shape == (24, 24, 3)


def test_pad_crop_is_a_shifted_window_of_the_padded_image():
  image = _images(1, 8, 8)[0]
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  offsets = set()
  for row in range(200):
    crop = images.pad_crop(image, images.rng(0, 0, row), 4)
    found = [(t, s) for t in range(9) for s in range(9) if np.array_equal(padded[t:t + 8, s:s + 8], crop)]
    assert len(found) == 1
    offsets.add(found[0])
  assert len(offsets) > 60  # of 81: every shift of -4..4 pixels in both directions can be drawn


def test_flip_mirrors_about_half_the_images():
  batch = {'image': np.repeat(_images(1), 64, axis=0)}
  out = images.augment(batch, 0, 0, np.arange(64), crop='none', image_size=0, crop_scale=(1, 1), pad=0,
                       flip=True)['image']
  flipped = [np.array_equal(o, batch['image'][0, :, ::-1]) for o in out]
  kept = [np.array_equal(o, batch['image'][0]) for o in out]
  assert all(f != k for f, k in zip(flipped, kept, strict=True))
  assert 20 < sum(flipped) < 44


def test_eval_crop_is_the_central_square_resized():
  image = _images(1, 100, 60)[0]
  side = round(60 * 0.875)  # 52: the central 87.5% of the shorter side
  top, left = (100 - side) // 2, (60 - side) // 2
  box = (left, top, left + side, top + side)  # PIL's resize reads the box's neighbours too (no edge clamp)
  expected = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BILINEAR, box=box))
  np.testing.assert_array_equal(images.center_crop(image, 8), expected)
  # Varied sizes come as a list and leave as one stacked array; a stacked batch of the size stays as it is.
  out = images.eval_crop([image, _images(1, 20, 50)[0]], 8)
  assert out.shape == (2, 8, 8, 3)
  stacked = _images(2, 8, 8)
  assert images.eval_crop(stacked, 8) is stacked and images.eval_crop(stacked, 0) is stacked


def test_normalization_uses_the_datasets_statistics():
  mean, std = images.IMAGENET_MEAN, images.IMAGENET_STD
  pixel = np.round(np.array(mean) * 255).astype(np.uint8).reshape(1, 1, 1, 3)
  np.testing.assert_allclose(images.normalize(pixel, mean, std).ravel(), 0, atol=0.01)
  white = images.normalize(np.full((1, 1, 1, 3), 255, np.uint8), mean, std)
  np.testing.assert_allclose(white.ravel(), (1 - np.array(mean)) / np.array(std), rtol=1e-6)
  assert white.dtype == np.float32


def _first_batches(ds, n, rows=None, **kwargs):
  it = pipeline.train_iterator(ds.splits['train'], ds.preprocess, 8, 1, rows, augment=ds.augment, **kwargs)
  batches = [next(it) for _ in range(n)]
  if hasattr(it, 'close'):
    it.close()
  return batches


def test_imagenet_and_voc_through_mock_data():
  with tfds.testing.mock_data(num_examples=24):
    imagenet = data.load(_config('imagenet2012', **AUGMENT).data)
    voc = data.load(_config('voc2007', image_size=16).data)  # no augmentation: the eval crop for train too
    assert imagenet.num_classes == 1000 and voc.num_classes == 20 and voc.augment is None
    assert voc.class_names[:2] == ('aeroplane', 'bicycle')
    for ds, label_shape, label_dtype in ((imagenet, (8,), np.int32), (voc, (8, 20), np.float32)):
      assert isinstance(ds.splits['train'].read([0, 1])['image'], list)  # sizes vary: cropped one by one
      for batch in [*_first_batches(ds, 2), next(pipeline.eval_batches(ds.splits['test'], ds.preprocess, 8))]:
        assert batch['inputs'].shape == (8, 16, 16, 3) and batch['inputs'].dtype == np.float32
        assert batch['label'].shape == label_shape and batch['label'].dtype == label_dtype
    source = tfds.data_source('voc/2007', split='validation')
    batch = next(pipeline.eval_batches(voc.splits['eval'], voc.preprocess, 8))
    for example, multi_hot in zip((source[i] for i in range(8)), batch['label'], strict=True):
      np.testing.assert_array_equal(np.flatnonzero(multi_hot), np.unique(example['labels']))


def test_images_of_varied_sizes_in_memory_read_as_from_the_source():
  with tfds.testing.mock_data(num_examples=24):
    on_disk = data.load(_config('voc2007', image_size=16).data).splits['eval']
    in_memory = data.load(_config('voc2007', in_memory=True, image_size=16).data).splits['eval']
  for split in (in_memory, in_memory.take(10), on_disk.take(10)):
    batch, expected = split.read([7, 2, 9]), on_disk.read([7, 2, 9])
    assert isinstance(batch['image'], list) and len(batch['image']) == 3
    for a, b in zip(batch['image'], expected['image'], strict=True):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(batch['label'], expected['label'])


def test_each_host_reads_its_rows_of_the_augmented_global_batch():
  with tfds.testing.mock_data(num_examples=24):
    ds = data.load(_config('cifar10', crop='pad', pad=4, flip=True).data)
    whole = _first_batches(ds, 3)
    for rows in (np.arange(0, 8, 2), np.arange(1, 8, 2)):  # host 0 and host 1 of two
      for full, part in zip(whole, _first_batches(ds, 3, rows=rows), strict=True):
        np.testing.assert_array_equal(part['inputs'], full['inputs'][rows])
    resumed = _first_batches(ds, 1, start=2)[0]  # a run resumed at step 2
    np.testing.assert_array_equal(resumed['inputs'], whole[2]['inputs'])


@pytest.mark.slow  # about 10 s: it starts two worker processes
def test_worker_processes_give_the_same_batches():
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load(_config('imagenet2012', **AUGMENT).data)
    alone, workers = _first_batches(ds, 5), _first_batches(ds, 5, workers=2, prefetch=1)
  for a, b in zip(alone, workers, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_placeholder_for_dry_runs_without_the_data():
  ds = data.placeholder(_config('imagenet2012', image_size=224).data, rows=2)
  batch = ds.preprocess(ds.splits['train'].read([0, 1]))
  assert batch['inputs'].shape == (2, 224, 224, 3) and batch['label'].shape == (2,)
  voc = data.placeholder(_config('voc2012', image_size=64).data)
  assert voc.preprocess(voc.splits['train'].read([0]))['label'].shape == (1, 20)


@pytest.mark.parametrize('name, fields, match', [
    ('cifar10', {'crop': 'center'}, 'augment.crop'),
    ('cifar10', {'image_size': -1}, 'augment.image_size'),
    ('cifar10', {'crop_scale': (0.5, 1.5)}, 'augment.crop_scale'),
    ('cifar10', {'crop_scale': (0.0, 1.0)}, 'augment.crop_scale'),
    ('cifar10', {'crop': 'pad', 'pad': 0}, 'augment.pad'),
    ('imagenet2012', {'image_size': 0}, 'varied sizes'),
    ('imdb_reviews', {'flip': True}, 'has no images'),
])
def test_bad_augmentation_is_one_config_error(name, fields, match):
  c = _config(name, **fields)
  if name == 'imdb_reviews':
    c.data.update({'tokenizer': 'byte', 'seq_len': 16})
  with pytest.raises(ConfigError, match=match):
    data.check_config(c.data)


def test_imagenet_refuses_to_be_read_into_memory():
  with pytest.raises(ConfigError, match='in_memory=False'):
    data.check_config(_config('imagenet2012', in_memory=True, image_size=224).data)


# bigjax.main, with every TFDS dataset replaced by mock_data's (cifar10 is not on this machine).
MOCK_MAIN = '''
import tensorflow_datasets as tfds
from absl import app
from bigjax import main
with tfds.testing.mock_data(num_examples=64):
  app.run(main.main, flags_parser=main.parse_flags)
'''
CIFAR = ['--config=experiments/cifar10_resnet.py', '--config.model.stage_sizes=(1,)',
         '--config.model.width=4',
         '--config.train.batch_size=8', '--config.train.steps=40', '--config.train.eval_every=40',
         '--config.train.log_every=1', '--config.checkpoint.every=10', '--config.optim.warmup_steps=0',
         '--config.data.augment.crop=random_resized', '--config.data.augment.flip=True',
         '--config.data.augment.crop_scale=(0.3,1.0)']


def _mock_main(workdir, **popen_kwargs):
  return subprocess.Popen([sys.executable, '-c', MOCK_MAIN, *CIFAR, f'--workdir={workdir}'], cwd=REPO,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, **popen_kwargs)


@pytest.mark.slow  # 45-60 s on 2 cores: three runs of bigjax.main
def test_augmented_cifar10_killed_and_resumed_matches_uninterrupted(tmp_path):
  clean = _mock_main(tmp_path / 'clean', stderr=subprocess.PIPE, text=True)
  _, err = clean.communicate(timeout=600)
  assert clean.returncode == 0, err[-3000:]

  workdir = tmp_path / 'killed'
  proc = _mock_main(workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert signal_when(proc, (workdir / 'checkpoints' / '20').is_dir, signal.SIGKILL)
  newest = max(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  assert 20 <= newest < 40  # killed mid-run
  rerun = _mock_main(workdir, stderr=subprocess.PIPE, text=True)
  _, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err[-3000:]
  assert_resumed(err, str(workdir), newest)
  untimed = lambda w: [{k: v for k, v in r.items() if k not in RATES} for r in read_metrics(w)]  # noqa: E731
  killed, uninterrupted = untimed(workdir), untimed(tmp_path / 'clean')
  assert killed == uninterrupted and killed[-1]['split'] == 'test'  # every line, to the last digit
