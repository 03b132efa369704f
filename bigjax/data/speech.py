"""Speech datasets: int16 audio at 16 kHz and its transcript, TFDS's `speech` and `text` features
(librispeech, and the offline spoken corpus of bigjax/data/spoken.py).

Transcripts are normalized (lowercase letters, apostrophes and single spaces) and tokenized by
the run's tokenizer: `byte` gives characters, `sentencepiece` subword units. A batch is
  {'inputs': (B, S) int16 samples, 'input_length': (B,) int32 samples,
   'labels': (B, L) int32 token ids padded with 0, 'label_length': (B,) int32}
and the model turns the samples into features on the device (bigjax/audio.py), so the host only
moves int16. The pad id 0 never occurs in a transcript, so it doubles as CTC's blank.

In memory (data.in_memory), a split keeps one int16 array per utterance. data.bucket (in samples)
batches utterances of similar duration and pads each batch only to the multiple of bucket that
holds its longest utterance (bigjax/data/pipeline.py); without it a batch is padded to
data.max_seconds. Train utterances longer than data.max_seconds, or with more than data.target_len
tokens, are left out (and counted in the log); eval and test keep every utterance, and a longer one
is a config error, so scores are always over the whole split. Read from disk (in_memory=False, for
corpora that do not fit in memory), every batch is padded to data.max_seconds.
"""

import re

import numpy as np
from absl import logging

from bigjax.config import ConfigError, check
from bigjax.data import pipeline

SAMPLE_RATE = 16000
_NOT_SPOKEN = re.compile(r"[^a-z' ]+")


BLANK = 0  # CTC's blank: the pad id, which no transcript contains


def best_path(ids, length: int) -> list[int]:
  """A frame-wise argmax's first `length` frames, repeats merged and blanks dropped: CTC's greedy
  decoding (the task's, and a served export's, which may not import the task)."""
  ids = np.asarray(ids[:length])
  keep = np.ones(len(ids), bool)
  keep[1:] = ids[1:] != ids[:-1]
  return [int(i) for i in ids[keep] if i != BLANK]


def normalize_text(text) -> str:
  """Lowercase letters, apostrophes and single spaces: what a transcript spells."""
  text = text.decode('utf-8', errors='replace') if isinstance(text, bytes) else str(text)
  return ' '.join(_NOT_SPOKEN.sub(' ', text.lower()).split())


def train_texts(source):
  """The train split's normalized transcripts (a tokenizer is trained on them)."""
  for i in range(len(source)):
    yield normalize_text(source[i]['text'])


def check_config(data_config) -> None:
  for field in ('tokenizer', 'target_len', 'max_seconds'):
    if field not in data_config:
      raise ConfigError(f'config.data.{field} is missing: speech dataset {data_config.name!r} needs '
                        f'data.tokenizer, data.target_len (transcript tokens) and data.max_seconds')
  check(data_config.target_len > 0, 'data.target_len', data_config.target_len, 'use a length > 0')
  check(data_config.max_seconds > 0, 'data.max_seconds', data_config.max_seconds, 'use a duration > 0')
  bucket = data_config.get('bucket', 0)
  check(bucket == 0 or data_config.in_memory, 'data.bucket', bucket,
        'bucketing by duration needs data.in_memory=True (or use 0)')


def _encode(tokenizer, texts, width: int) -> tuple[np.ndarray, np.ndarray]:
  ids = [tokenizer.encode(t) for t in texts]
  labels = np.zeros((len(ids), width), np.int32)
  for i, row in enumerate(ids):
    labels[i, :min(len(row), width)] = row[:width]
  return labels, np.array([len(r) for r in ids], np.int32)


def _audio(example) -> np.ndarray:
  return np.asarray(example['speech']).astype(np.int16).reshape(-1)  # librispeech stores int64 in mocks


def _in_memory(split: str, source, tokenizer, data_config) -> pipeline.Split:
  """The split's utterances in memory: ragged int16 audio, padded labels, and their lengths."""
  examples = [source[i] for i in range(len(source))]
  audio = [_audio(e) for e in examples]
  labels, label_length = _encode(tokenizer, [normalize_text(e['text']) for e in examples],
                                 data_config.target_len)
  audio_length = np.array([len(a) for a in audio], np.int32)
  max_samples = int(data_config.max_seconds * SAMPLE_RATE)
  too_long = (audio_length > max_samples) | (label_length > data_config.target_len)
  if too_long.any() and split != 'train':
    i = int(np.argmax(too_long))
    raise ConfigError(f'config.data.max_seconds={data_config.max_seconds} or data.target_len='
                      f'{data_config.target_len} is too small: {split} utterance {i} lasts '
                      f'{audio_length[i] / SAMPLE_RATE:.2f} s with {label_length[i]} tokens, and eval and '
                      f'test score every utterance: raise them')
  if too_long.any():
    logging.info('Leaving out %d of %d train utterances longer than %g s or %d tokens.',
                 too_long.sum(), len(audio), data_config.max_seconds, data_config.target_len)
  keep = np.flatnonzero(~too_long)
  arrays = {'audio': pipeline.object_array([audio[i] for i in keep]), 'audio_length': audio_length[keep],
            'transcript': labels[keep], 'transcript_length': label_length[keep]}
  return pipeline.Split(arrays=arrays, ragged=('audio',))


def _record(tokenizer, data_config):
  """A source example -> one padded row, for splits read from disk."""
  max_samples = int(data_config.max_seconds * SAMPLE_RATE)

  def record(example):
    audio = _audio(example)
    labels, length = _encode(tokenizer, [normalize_text(example['text'])], data_config.target_len)
    if len(audio) > max_samples or length[0] > data_config.target_len:
      raise ConfigError(f'config.data.max_seconds={data_config.max_seconds} or data.target_len='
                        f'{data_config.target_len} is too small: an utterance lasts '
                        f'{len(audio) / SAMPLE_RATE:.2f} s with {length[0]} tokens; raise them')
    return {'audio': np.pad(audio, (0, max_samples - len(audio))), 'audio_length': np.int32(len(audio)),
            'transcript': labels[0], 'transcript_length': length[0]}
  return record


def splits(sources: dict, tokenizer, data_config) -> dict:
  if data_config.in_memory:
    return {split: _in_memory(split, source, tokenizer, data_config) for split, source in sources.items()}
  return {split: pipeline.Split(source, record=_record(tokenizer, data_config))
          for split, source in sources.items()}


def preprocess_for(data_config):
  """batch of split rows -> the model's batch; ragged audio (not bucketed) padded to data.max_seconds."""
  max_samples = int(data_config['max_seconds'] * SAMPLE_RATE)

  def preprocess(batch: dict) -> dict:
    audio = batch['audio']
    if isinstance(audio, list):
      audio = pipeline.pad_rows(audio, max_samples)
    return {'inputs': audio.astype(np.int16), 'input_length': batch['audio_length'].astype(np.int32),
            'labels': batch['transcript'].astype(np.int32),
            'label_length': batch['transcript_length'].astype(np.int32)}
  return preprocess


def random_dataset(num_examples: int, samples: int, transcript_len: int, vocab_size: int, seed: int = 0):
  """A Dataset of random audio and transcripts of fixed shapes, for benchmarks: every sample is real."""
  from bigjax import data  # noqa: PLC0415 (the package imports this module)
  from bigjax.data import tokenizers  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  arrays = {'audio': rng.integers(-3000, 3000, (num_examples, samples), dtype=np.int16),
            'audio_length': np.full(num_examples, samples, np.int32),
            'transcript': rng.integers(3, vocab_size, (num_examples, transcript_len), dtype=np.int32),
            'transcript_length': np.full(num_examples, transcript_len, np.int32)}
  splits = {split: pipeline.Split(arrays=arrays) for split in ('train', 'eval', 'test')}
  preprocess = preprocess_for({'max_seconds': samples / SAMPLE_RATE})
  return data.Dataset('random_speech', vocab_size, splits, preprocess, tokenizers.ByteTokenizer())
