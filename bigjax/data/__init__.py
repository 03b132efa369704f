"""Datasets by name: where the examples come from and what a batch looks like.

Every dataset is read through `tfds.data_source` (ArrayRecord, random access,
no TensorFlow). Offline datasets carry their own TFDS builder and are prepared
into the data dir on first use; the others must have been prepared before.
"""

import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from bigjax.config import ConfigError
from bigjax.data import digits, pipeline


def images_to_inputs(batch: dict) -> dict:
  """uint8 images (B, H, W, C) -> float32 inputs centred near 0, and int32 labels."""
  inputs = (batch['image'].astype(np.float32) / 255.0 - 0.5) / 0.25
  return {'inputs': inputs, 'label': batch['label'].astype(np.int32)}


class DatasetSpec(NamedTuple):
  tfds_name: str
  splits: dict  # our split ('train', 'eval', 'test') -> TFDS split string
  num_classes: int
  preprocess: Callable  # numpy batch -> model-ready numpy batch
  builder: type | None = None  # offline: a TFDS builder prepared on first use


DATASETS = {
    'digits': DatasetSpec('digits', {'train': 'train', 'eval': 'validation', 'test': 'test'},
                          10, images_to_inputs, builder=digits.Digits),
    'mnist': DatasetSpec('mnist', {'train': 'train[:55000]', 'eval': 'train[55000:]', 'test': 'test'},
                         10, images_to_inputs),
    'cifar10': DatasetSpec('cifar10', {'train': 'train[:45000]', 'eval': 'train[45000:]', 'test': 'test'},
                           10, images_to_inputs),
}


class Dataset(NamedTuple):
  name: str
  num_classes: int
  splits: dict  # 'train' / 'eval' / 'test' -> pipeline.Split
  preprocess: Callable


def _data_dir_for_humans(data_dir) -> str:
  return str(data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _prepare_offline(spec: DatasetSpec, data_dir) -> None:
  builder = spec.builder(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    logging.info('Preparing %s into %s (once).', spec.tfds_name, builder.data_dir)
    builder.download_and_prepare()


def load(data_config) -> Dataset:
  """Opens the train, eval and test sources; raises ConfigError if they cannot be read."""
  spec = DATASETS[data_config.name]
  data_dir = data_config.data_dir
  if spec.builder is not None:
    # Process 0 prepares first so that hosts sharing a filesystem do not race on the same
    # directory; the others then prepare only if their (local) disk still lacks it.
    if jax.process_index() == 0:
      _prepare_offline(spec, data_dir)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'bigjax: {spec.tfds_name} prepared')
    if jax.process_index() != 0:
      _prepare_offline(spec, data_dir)
  splits = {}
  for split, tfds_split in spec.splits.items():
    try:
      source = tfds.data_source(spec.tfds_name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types here; all mean "not readable"
      raise ConfigError(
          f'dataset {spec.tfds_name!r} ({tfds_split}) is not prepared as ArrayRecord in '
          f'{_data_dir_for_humans(data_dir)} ({type(e).__name__}): on a machine with network run '
          f'`tfds build {spec.tfds_name} --file_format=array_record --data_dir=DIR` and copy DIR here, '
          f'or point --config.data.data_dir=DIR at it') from e
    splits[split] = pipeline.Split(source, in_memory=data_config.in_memory)
  return Dataset(data_config.name, spec.num_classes, splits, spec.preprocess)
