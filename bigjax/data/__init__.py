"""Datasets by name: where the examples come from and what a batch looks like.

Every dataset is read through `tfds.data_source` (ArrayRecord, random access,
no TensorFlow). Offline datasets carry their own TFDS builder and are prepared
into the data dir on first use; the others must have been prepared before.

Text datasets (a `text_feature`) are tokenized once per split (cached beside the
data, keyed by the tokenizer's fingerprint). The tokenizer is trained on the train
split and saved with the run (`tokenizer_path`), so that eval, sampling and later
runs in the same workdir read text exactly as training did.
- Language modelling (no `label_feature`): documents joined with EOS and cut into
  windows of seq_len + 1 tokens; a batch is {'inputs': window[:-1], 'targets': window[1:]}.
- Text classification: each text truncated to its first seq_len tokens and padded
  with the pad id; a batch is {'inputs': (B, seq_len) ids, 'label': (B,)}.
- Text pairs (a `target_feature`: translation, summarization): see bigjax/data/pairs.py.

Image datasets (a `mean` and `std`) are normalized with their own channel statistics. Those
whose images vary in size (ImageNet, Pascal VOC: `image_shape` with None) are read as lists
of images, decoded by TFDS (PIL, no TensorFlow), and cropped per example to
data.augment.image_size: by the train augmentation (images.py), or by the eval transform
(central crop, resize) in `preprocess`. Multi-label datasets (`multi_label`, Pascal VOC)
give a (B, num_classes) float32 multi-hot 'label'.
"""

import importlib
import os
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bigjax import files
from bigjax.config import ConfigError, check, check_choice
from bigjax.data import (
  images,
  pairs,
  pipeline,
  speech,
  tokenizers,
)
from bigjax.data.registry import DATASETS, DatasetSpec  # noqa: F401 (data.DatasetSpec: for extensions)


class Dataset(NamedTuple):
  name: str
  num_classes: int  # labels a target can take: for language models, the vocabulary
  splits: dict  # 'train' / 'eval' / 'test' -> pipeline.Split
  preprocess: Callable
  tokenizer: object = None  # text datasets only
  class_names: tuple = ()  # for per-class figures in logs; empty when the data names none
  # Image datasets with data.augment on: (batch, seed, step, global rows) -> batch, the host-side train
  # transform applied before preprocess (images.augment); None when off.
  augment: Callable | None = None


def _data_dir_for_humans(data_dir) -> str:
  return str(data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def _prepare_offline(spec: DatasetSpec, data_config) -> None:
  kwargs = {'config': spec.builder_config} if spec.builder_config else {}
  if data_config.get('source_dir'):  # builders that read files the user already has
    kwargs['source_dir'] = data_config.source_dir
  builder = spec.builder(data_dir=data_config.data_dir, file_format='array_record', **kwargs)
  if not builder.is_prepared():
    logging.info('Preparing %s into %s (once).', spec.tfds_name, builder.data_dir)
    builder.download_and_prepare()


def _class_names(source) -> tuple:
  features = source.dataset_info.features if hasattr(source, 'dataset_info') else {}
  label = features['label'] if 'label' in features else None
  if label is None and 'labels' in features:  # multi-label (Pascal VOC): a Sequence of a ClassLabel
    label = getattr(features['labels'], 'feature', None)
  names = getattr(label, 'names', None)
  return tuple(names) if names and not all(n.isdigit() for n in names) else ()  # '0'..'9' says nothing


def _open_sources(spec: DatasetSpec, data_config) -> dict:
  """split -> tfds data source, preparing an offline dataset first if needed."""
  data_dir = data_config.data_dir
  if spec.module:
    importlib.import_module(spec.module)
  if spec.builder is not None:
    _prepare_offline(spec, data_config)
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
  return sources


def load(data_config, tokenizer_path: str | None = None) -> Dataset:
  """Opens the train, eval and test sources; raises ConfigError if they cannot be read.

  tokenizer_path (text datasets): the run's tokenizer; used if it exists, else made from the
  train split (or the data dir's cache) and left for the caller to save there.

  On several hosts, process 0 prepares first (an offline dataset, the tokenizer, the token
  caches) while the others wait, so no two hosts write one file. The others then read what it
  wrote, or prepare their own copy on a disk they do not share, and every host checks that it
  reads text with process 0's tokenizer.
  """
  if jax.process_count() == 1:
    return _load(data_config, tokenizer_path)
  dataset, error = None, None
  if jax.process_index() == 0:
    try:
      dataset = _load(data_config, tokenizer_path)
    except ConfigError as e:
      error = e
  # Also the barrier: the others start only once process 0 is done (or has failed).
  if not int(multihost_utils.broadcast_one_to_all(np.int32(error is None))):
    if error:
      raise error
    raise ConfigError('process 0 could not load the data: its error says why')
  if dataset is None:
    dataset = _load(data_config, tokenizer_path)
  _check_same_tokenizer(dataset.tokenizer)
  return dataset


class _PlaceholderTokenizer(NamedTuple):
  vocab_size: int
  kind: str = 'placeholder'
  pad_id: int = tokenizers.PAD
  bos_id: int = tokenizers.BOS
  eos_id: int = tokenizers.EOS

  @property
  def token_bytes(self) -> np.ndarray:
    return np.ones(self.vocab_size, np.int32)


def _image_placeholder(spec: DatasetSpec, data_config, rows: int) -> Dataset:
  size = data_config.augment.image_size
  shape = (size, size, spec.image_shape[-1]) if size else spec.image_shape
  label = np.zeros((rows, spec.num_classes), np.float32) if spec.multi_label else np.zeros(rows, np.int32)
  arrays = {'image': np.zeros((rows, *shape), np.uint8), 'label': label}
  splits = {split: pipeline.Split(arrays=arrays) for split in spec.splits}
  preprocess, augment = images.transforms(spec, data_config)
  return Dataset(data_config.name, spec.num_classes, splits, preprocess, augment=augment)


def placeholder(data_config, rows: int = 1) -> Dataset:
  """A dataset with the configured shapes (and vocabulary) but `rows` all-zero (all-padding) examples
  per split, for --dry_run on a machine without the data (compiling needs shapes, not data)."""
  spec = DATASETS[data_config.name]
  check_config(data_config)
  if spec.image_shape:
    return _image_placeholder(spec, data_config, rows)
  tokenizer = (tokenizers.ByteTokenizer() if data_config.tokenizer == 'byte'
               else _PlaceholderTokenizer(data_config.get('vocab_size', 0)))
  if spec.speech:  # utterances of data.max_seconds
    samples, zeros = int(data_config.max_seconds * speech.SAMPLE_RATE), np.zeros(rows, np.int32)
    arrays = {'audio': np.zeros((rows, samples), np.int16), 'audio_length': zeros + samples,
              'transcript': np.zeros((rows, data_config.target_len), np.int32), 'transcript_length': zeros}
    splits = {split: pipeline.Split(arrays=arrays) for split in spec.splits}
    preprocess = speech.preprocess_for(data_config)
    return Dataset(data_config.name, tokenizer.vocab_size, splits, preprocess, tokenizer)
  if not spec.text_feature or data_config.tokenizer == 'word':
    raise ConfigError(f'--dry_run without the data needs a text dataset with a sentencepiece or byte '
                      f'tokenizer: prepare {spec.tfds_name!r} first')
  seq_len, ones = data_config.seq_len, np.ones(rows, np.int32)
  if spec.target_feature:
    arrays = {'source': np.zeros((rows, seq_len), np.int32), 'source_length': ones,
              'target': np.zeros((rows, data_config.target_len), np.int32), 'target_length': ones}
    preprocess, classes = pairs.pair_batch, tokenizer.vocab_size
  elif spec.label_feature:
    arrays = {'tokens': np.zeros((rows, seq_len), np.int32), 'label': ones * 0, 'length': ones}
    preprocess, classes = labelled_text_batch, spec.num_classes
  else:
    arrays = {'tokens': np.zeros((rows, seq_len + 1), np.int32)}
    preprocess, classes = next_token_batch, tokenizer.vocab_size
  splits = {split: pipeline.Split(arrays=arrays) for split in spec.splits}
  return Dataset(data_config.name, classes, splits, preprocess, tokenizer)


def _check_same_tokenizer(tokenizer) -> None:
  """ConfigError on a host whose tokenizer is not process 0's (hosts that do not share a data
  dir may train different ones): its token ids would mean other words."""
  mine = tokenizers.fingerprint(tokenizer) if tokenizer else 'none'
  encoded = np.frombuffer(mine.encode().ljust(64)[:64], np.uint8)
  first = bytes(np.asarray(multihost_utils.broadcast_one_to_all(encoded), np.uint8)).decode().strip()
  if first != mine:
    raise ConfigError(f'process {jax.process_index()} reads text with tokenizer {mine}, process 0 with '
                      f'{first}: give every host the same --config.data.data_dir, or copy process 0\'s '
                      f'tokenizer cache (bigjax_cache/ in its data dir) to this host')


def _load(data_config, tokenizer_path: str | None) -> Dataset:
  spec = DATASETS[data_config.name]
  sources = _open_sources(spec, data_config)
  if spec.speech:
    return _load_speech(spec, data_config, sources, tokenizer_path)
  if spec.text_feature:
    return _load_text(spec, data_config, sources, tokenizer_path)
  check_config(data_config)
  ragged = ('image',) if spec.image_shape and None in spec.image_shape else ()
  splits = {split: pipeline.Split(source, data_config.in_memory, record=spec.record, ragged=ragged)
            for split, source in sources.items()}
  preprocess, augment = images.transforms(spec, data_config)
  return Dataset(data_config.name, spec.num_classes, splits, preprocess,
                 class_names=_class_names(sources['train']), augment=augment)


def _as_str(text) -> str:
  return text.decode('utf-8', errors='replace') if isinstance(text, bytes) else str(text)


def _texts(source, feature):
  for i in range(len(source)):
    yield _as_str(source[i][feature])


def labelled_texts(data_config) -> dict:
  """split -> (texts, labels) of a text classification dataset, as stored: for baselines."""
  spec = DATASETS[data_config.name]
  sources = _open_sources(spec, data_config)
  return {split: _read_labelled(source, spec) for split, source in sources.items()}


def pair_texts(data_config, tokenizer_path: str | None = None) -> dict:
  """split -> (sources, references) of a text pair dataset, as the trainer scores them: the texts
  of the tokenized, truncated splits (for baselines that must be judged on the same references)."""
  dataset = load(data_config, tokenizer_path)
  return {split: pairs.texts(dataset.tokenizer, s) for split, s in dataset.splits.items()}


def _read_labelled(source, spec: DatasetSpec) -> tuple[list[str], np.ndarray]:
  records = [source[i] for i in range(len(source))]
  return ([_as_str(r[spec.text_feature]) for r in records],
          np.array([r[spec.label_feature] for r in records], np.int32))


def _cached(path: str, make: Callable[[], dict]) -> dict:
  """The arrays saved at path (.npz), made and saved (atomically) if missing."""
  if not epath.Path(path).exists():
    arrays = make()
    with files.replaced_atomically(path, 'wb') as f:  # a killed run never leaves a truncated cache
      np.savez(f, **arrays)
  with epath.Path(path).open('rb') as f, np.load(f) as saved:
    return dict(saved)


def _id_dtype(tokenizer):
  return np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32


def _document_stream(source, feature, tokenizer) -> dict:
  """The split's documents as one token array, each document followed by EOS."""
  logging.info('Tokenizing %d documents (once).', len(source))
  ids = []
  for text in _texts(source, feature):
    ids.extend(tokenizer.encode(text))
    ids.append(tokenizer.eos_id)
  return {'tokens': np.asarray(ids, _id_dtype(tokenizer))}


def encode_texts(tokenizer, texts, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(N, seq_len) ids, each text's first seq_len tokens padded at the end; and each text's length."""
  texts = list(texts)
  tokens = np.full((len(texts), seq_len), tokenizer.pad_id, _id_dtype(tokenizer))
  lengths = np.zeros(len(texts), np.int32)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text)
    tokens[i, :min(len(ids), seq_len)] = ids[:seq_len]
    lengths[i] = len(ids)
  return tokens, lengths


def _labelled_texts(source, spec, tokenizer, seq_len) -> dict:
  """Each text's first seq_len tokens, padded; its label; its length before truncation."""
  logging.info('Tokenizing %d texts (once).', len(source))
  texts, labels = _read_labelled(source, spec)
  tokens, lengths = encode_texts(tokenizer, texts, seq_len)
  return {'tokens': tokens, 'label': labels, 'length': lengths}


def check_config(data_config) -> None:
  """Text datasets need a known tokenizer, a length and (trained tokenizers) a vocabulary size;
  bucketing needs padded texts or utterances; image options must fit the images."""
  spec = DATASETS[data_config.name]
  bucket = data_config.get('bucket', 0)
  check(bucket == 0 or (bucket > 0 and (spec.label_feature or spec.target_feature or spec.speech)),
        'data.bucket', bucket, 'use 0 (off), or a width > 0 on a text classification, text pair or speech '
        'dataset')
  images.check_config(spec, data_config)
  if spec.speech:
    speech.check_config(data_config)
    check(data_config.tokenizer in ('byte', 'sentencepiece'), 'data.tokenizer', data_config.tokenizer,
          'speech is spelled in characters (byte) or sentencepiece units')
  elif not spec.text_feature:
    return
  else:
    for field in ('tokenizer', 'seq_len'):
      if field not in data_config:
        raise ConfigError(f'config.data.{field} is missing: text dataset {data_config.name!r} needs '
                          f'data.tokenizer and data.seq_len')
    check_choice(data_config, 'data', 'tokenizer', tokenizers.KINDS)
    check(data_config.seq_len > 0, 'data.seq_len', data_config.seq_len, 'use a length > 0')
  if spec.target_feature:
    if 'target_len' not in data_config:
      raise ConfigError(f'config.data.target_len is missing: text pairs {data_config.name!r} need a target '
                        f'length (and data.seq_len for the source)')
    check(data_config.target_len > 1, 'data.target_len', data_config.target_len, 'use a length > 1 (EOS too)')
  if data_config.tokenizer != 'byte':
    vocab_size = data_config.get('vocab_size', 0)
    check(vocab_size > 3, 'data.vocab_size', vocab_size, f'use a {data_config.tokenizer} vocabulary size > 3')


def _tokenizer(spec: DatasetSpec, data_config, sources: dict, cache: str, saved_path: str | None, *,
               texts=None):
  """The run's tokenizer (saved_path), else one made from `texts()` (default: the text features of
  the train split) or the data dir's cache of it."""
  if saved_path and epath.Path(saved_path).exists():
    tokenizer = tokenizers.load(saved_path)
    if tokenizer.kind != data_config.tokenizer:
      raise ConfigError(f'config.data.tokenizer={data_config.tokenizer!r} is invalid: this workdir\'s run '
                        f'uses a {tokenizer.kind!r} tokenizer ({saved_path}); use a new --workdir')
    return tokenizer
  features = [f for f in (spec.text_feature, spec.target_feature) if f]  # a pair: both sides
  texts = texts or (lambda: (t for f in features for t in _texts(sources['train'], f)))
  return tokenizers.get_or_train(data_config.tokenizer, data_config.get('vocab_size', 0), cache, texts)


def _load_text(spec: DatasetSpec, data_config, sources: dict, tokenizer_path: str | None) -> Dataset:
  check_config(data_config)
  seq_len = data_config.seq_len
  cache = files.join(files.path(_data_dir_for_humans(data_config.data_dir)), 'bigjax_cache', spec.tfds_name)
  epath.Path(cache).mkdir(parents=True, exist_ok=True)
  tokenizer = _tokenizer(spec, data_config, sources, cache, tokenizer_path)
  splits = {}
  pair_lengths = dict(source_len=seq_len, target_len=data_config.get('target_len', 0),
                      dtype=_id_dtype(tokenizer))
  for split, source in sources.items():
    name = f'{tokenizers.fingerprint(tokenizer)}_{spec.splits[split]}_{len(source)}'
    if spec.target_feature:
      splits[split] = pipeline.Split(arrays=_cached(
          files.join(cache, f'{name}_{seq_len}_{data_config.target_len}.npz'),
          lambda source=source: pairs.encode(tokenizer, list(_texts(source, spec.text_feature)),
                                             list(_texts(source, spec.target_feature)), **pair_lengths)))
      continue
    if spec.label_feature:
      arrays = _cached(files.join(cache, f'{name}_{seq_len}.npz'),
                       lambda source=source: _labelled_texts(source, spec, tokenizer, seq_len))
      splits[split] = pipeline.Split(arrays=arrays)
      continue
    tokens = _cached(files.join(cache, f'{name}.npz'),
                     lambda source=source: _document_stream(source, spec.text_feature, tokenizer))['tokens']
    if len(tokens) < seq_len + 1:
      raise ConfigError(f'config.data.seq_len={seq_len} is invalid: the {split} split has only '
                        f'{len(tokens)} tokens')
    # Windows of seq_len + 1 tokens that overlap by one: a view, not a copy.
    windows = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)[::seq_len]
    splits[split] = pipeline.Split(arrays={'tokens': windows})
  if spec.label_feature:
    return Dataset(data_config.name, spec.num_classes, splits, labelled_text_batch, tokenizer,
                   _class_names(sources['train']))
  if spec.target_feature:
    return Dataset(data_config.name, tokenizer.vocab_size, splits, pairs.pair_batch, tokenizer)
  return Dataset(data_config.name, tokenizer.vocab_size, splits, next_token_batch, tokenizer)


def _load_speech(spec: DatasetSpec, data_config, sources: dict, tokenizer_path: str | None) -> Dataset:
  check_config(data_config)
  cache = files.join(files.path(_data_dir_for_humans(data_config.data_dir)), 'bigjax_cache', spec.tfds_name)
  epath.Path(cache).mkdir(parents=True, exist_ok=True)
  tokenizer = _tokenizer(spec, data_config, sources, cache, tokenizer_path,
                         texts=lambda: speech.train_texts(sources['train']))
  return Dataset(data_config.name, tokenizer.vocab_size, speech.splits(sources, tokenizer, data_config),
                 speech.preprocess_for(data_config), tokenizer)


def next_token_batch(batch: dict) -> dict:
  tokens = batch['tokens'].astype(np.int32)
  return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}


def labelled_text_batch(batch: dict) -> dict:
  return {'inputs': batch['tokens'].astype(np.int32), 'label': batch['label'].astype(np.int32)}
