"""Datasets by name: where the examples come from and what a batch looks like.

Every dataset is read through `tfds.data_source` (ArrayRecord, random access,
no TensorFlow). Offline datasets carry their own TFDS builder and are prepared
into the data dir on first use; the others must have been prepared before.

Text datasets (a `text_feature`) are for language modelling: each split is
tokenized once (cached beside the data, with the tokenizer), its documents
joined with EOS, and cut into windows of seq_len + 1 tokens; a batch is
{'inputs': window[:-1], 'targets': window[1:]}.
"""

import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from bigjax.config import ConfigError, check, check_choice
from bigjax.data import digits, pipeline, python_stdlib, tokenizers


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
  text_feature: str | None = None  # text for language modelling: tokenized and packed


_SPLITS = {'train': 'train', 'eval': 'validation', 'test': 'test'}  # ours -> TFDS's
DATASETS = {
    'digits': DatasetSpec('digits', _SPLITS,
                          10, images_to_inputs, builder=digits.Digits),
    'mnist': DatasetSpec('mnist', {'train': 'train[:55000]', 'eval': 'train[55000:]', 'test': 'test'},
                         10, images_to_inputs),
    'cifar10': DatasetSpec('cifar10', {'train': 'train[:45000]', 'eval': 'train[45000:]', 'test': 'test'},
                           10, images_to_inputs),
    'python_stdlib': DatasetSpec('python_stdlib', _SPLITS, None, None, builder=python_stdlib.PythonStdlib,
                                 text_feature='text'),
    'tiny_shakespeare': DatasetSpec('tiny_shakespeare', _SPLITS, None, None, text_feature='text'),
    'lm1b': DatasetSpec('lm1b', {'train': 'train', 'eval': 'test[:50%]', 'test': 'test[50%:]'},
                        None, None, text_feature='text'),
}


class Dataset(NamedTuple):
  name: str
  num_classes: int  # labels a target can take: for language models, the vocabulary
  splits: dict  # 'train' / 'eval' / 'test' -> pipeline.Split
  preprocess: Callable
  tokenizer: object = None  # text datasets only


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
  sources = {}
  for split, tfds_split in spec.splits.items():
    try:
      sources[split] = tfds.data_source(spec.tfds_name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types here; all mean "not readable"
      raise ConfigError(
          f'dataset {spec.tfds_name!r} ({tfds_split}) is not prepared as ArrayRecord in '
          f'{_data_dir_for_humans(data_dir)} ({type(e).__name__}): on a machine with network run '
          f'`tfds build {spec.tfds_name} --file_format=array_record --data_dir=DIR` and copy DIR here, '
          f'or point --config.data.data_dir=DIR at it') from e
  if spec.text_feature:
    return _load_text(spec, data_config, sources)
  splits = {split: pipeline.Split(source, data_config.in_memory) for split, source in sources.items()}
  return Dataset(data_config.name, spec.num_classes, splits, spec.preprocess)


def _texts(source, feature):
  for i in range(len(source)):
    text = source[i][feature]
    yield text.decode('utf-8', errors='replace') if isinstance(text, bytes) else str(text)


def _tokens(source, feature, tokenizer, path) -> np.ndarray:
  """The split's documents as one token array, each document followed by EOS; cached at path."""
  if os.path.exists(path):
    return np.load(path)
  logging.info('Tokenizing %d documents into %s (once).', len(source), path)
  ids = []
  for text in _texts(source, feature):
    ids.extend(tokenizer.encode(text))
    ids.append(tokenizer.eos_id)
  tokens = np.asarray(ids, np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32)
  with open(path + '.tmp', 'wb') as f:
    np.save(f, tokens)
  os.replace(path + '.tmp', path)  # atomic: a killed run never leaves a truncated cache
  return tokens


def check_config(data_config) -> None:
  """Text datasets need a known tokenizer, a context length and (SentencePiece) a vocabulary size."""
  if not DATASETS[data_config.name].text_feature:
    return
  for field in ('tokenizer', 'seq_len'):
    if field not in data_config:
      raise ConfigError(f'config.data.{field} is missing: text dataset {data_config.name!r} needs '
                        f'data.tokenizer and data.seq_len')
  check_choice(data_config, 'data', 'tokenizer', tokenizers.KINDS)
  check(data_config.seq_len > 0, 'data.seq_len', data_config.seq_len, 'use a context length > 0')
  if data_config.tokenizer == 'sentencepiece':
    vocab_size = data_config.get('vocab_size', 0)
    check(vocab_size > 3, 'data.vocab_size', vocab_size, 'use a SentencePiece vocabulary size > 3')


def _load_text(spec: DatasetSpec, data_config, sources: dict) -> Dataset:
  check_config(data_config)
  seq_len = data_config.seq_len
  cache = os.path.join(os.path.expanduser(_data_dir_for_humans(data_config.data_dir)), 'bigjax_cache',
                       spec.tfds_name)
  os.makedirs(cache, exist_ok=True)
  vocab_size = data_config.get('vocab_size', 0)
  tokenizer = tokenizers.get_or_train(data_config.tokenizer, vocab_size, cache,
                                      lambda: _texts(sources['train'], spec.text_feature))
  name = 'byte' if data_config.tokenizer == 'byte' else f'{data_config.tokenizer}_{vocab_size}'
  splits = {}
  for split, source in sources.items():
    tokens = _tokens(source, spec.text_feature, tokenizer,
                     os.path.join(cache, f'{name}_{spec.splits[split]}_{len(source)}.npy'))
    if len(tokens) < seq_len + 1:
      raise ConfigError(f'config.data.seq_len={seq_len} is invalid: the {split} split has only '
                        f'{len(tokens)} tokens')
    # Windows of seq_len + 1 tokens that overlap by one: a view, not a copy.
    windows = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)[::seq_len]
    splits[split] = pipeline.Split(arrays={'tokens': windows})
  return Dataset(data_config.name, tokenizer.vocab_size, splits, next_token_batch, tokenizer)


def next_token_batch(batch: dict) -> dict:
  tokens = batch['tokens'].astype(np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}
