"""`spoken_corpus`: English speech synthesized offline with eSpeak NG, as a TFDS dataset (ArrayRecord).

The sentences are real English found on every machine: the first sentences of the Python standard
library's docstrings (modules, classes, functions; the sources are parsed, never imported), kept when
they are plain words (3 to 12 of them, no digits, symbols, code or acronyms, every word common in the
docstrings) and lowercased: 3,230 sentences on CPython 3.11.7 (another Python gives other sentences:
its version is recorded with the data). Each utterance is one sentence spoken by an eSpeak NG voice
(bigjax/data/espeak.py) at 140..200 words per minute and pitch 25..75, with white, pink or brown noise
at 10..30 dB SNR, as 16 kHz int16 'speech' and its 'text' (the feature names of TFDS's librispeech, so
one reader serves both), plus the 'voice', 'rate', 'pitch', 'noise' and 'snr'.

Held out twice over: a sentence is in one split only (by a CRC32 of its text: about 90% train, 5%
validation, 5% test), and validation and test are spoken by voice variants never heard in train,
different from each other (every split uses all eight English accents). UNSEEN_VOICES are used by no
split: a transcription check in yet another voice.

Sizes: 12,000 train, 600 validation and 600 test utterances, each at most 6 s (longer ones are
skipped), 2.6 s on average: 8.9 + 0.43 + 0.43 hours, 1.1 GB of int16 (0.95 GB on disk). Every random
choice comes from (a constant, split, utterance index), and eSpeak is reloaded for each utterance, so
every build on one machine holds bitwise the same examples (the ArrayRecord files' bytes may differ).
Preparing it takes about 2 minutes on an idle 2-core machine (3.5 on a busy one) and 1.5 GB of memory,
in WORKERS processes (started with 'spawn': a script that prepares it
needs an `if __name__ == '__main__'` guard).
"""

import ast
import collections
import functools
import multiprocessing
import os
import platform
import re
import sysconfig
import zlib
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import shuffle

SAMPLE_RATE = 16000  # bigjax.data.espeak's, which is imported where used: bigjax.data imports this module,
# and `python -m bigjax.data.espeak` warns when the package has imported that module before it runs

SPLIT_SIZES = {'train': 12000, 'validation': 600, 'test': 600}  # utterances
MAX_SECONDS = 6.0  # longer utterances are skipped
WORKERS = 2  # processes that synthesize; a split under _PARALLEL_FROM utterances is built in this one
RATES, PITCHES, SNR_DB = (140, 200), (25, 75), (10.0, 30.0)  # drawn uniformly per utterance
NOISES = ('white', 'pink', 'brown')
ACCENTS = ('en', 'en-us', 'en-us-nyc', 'en-gb-scotland', 'en-gb-x-rp', 'en-gb-x-gbclan', 'en-gb-x-gbcwmd',
           'en-029')
VARIANTS = {  # eSpeak NG's voices/!v/ files: each split's are heard in no other split
    'train': ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'f1', 'f2', 'f3', 'klatt', 'klatt2', 'max', 'paul',
              'robert', 'steph', 'Andy'),
    'validation': ('m7', 'f4', 'klatt3', 'quincy'),
    'test': ('m8', 'f5', 'klatt4', 'david'),
}
UNSEEN_VOICES = ('en-us+edward', 'en+linda', 'en-gb-scotland+benjamin')  # in no split
_SPLITS = tuple(SPLIT_SIZES)
_SEED = 20240  # the corpus's one constant; changing it is a new corpus (a new VERSION)
_PARALLEL_FROM = 500
_BLOCK = 256  # utterances a worker pool synthesizes ahead of TFDS
_MEMORY_BUFFER = 4 << 30  # bytes of serialized utterances TFDS may hold to sort one split
_MIN_WORDS, _MAX_WORDS, _MIN_WORD_COUNT = 3, 12, 3
_SKIP_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__'}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r'(?<=[.!?])\s')
_PUNCTUATION = re.compile(r'[,;:]|\s-+\s')  # spoken as a pause, not written in a transcript


def voices(split: str) -> tuple[str, ...]:
  """The voices ('accent+variant') that speak `split`."""
  return tuple(f'{accent}+{variant}' for variant in VARIANTS[split] for accent in ACCENTS)


def _docstrings():
  """Every module, class and function docstring of the standard library's sources, in a fixed order."""
  root = sysconfig.get_paths()['stdlib']
  for directory, subdirs, files in os.walk(root):  # sorted in place: a fixed order
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith('test'))
    for name in sorted(f for f in files if f.endswith('.py') and not f.startswith('test_')):
      with open(os.path.join(directory, name), encoding='utf-8', errors='replace') as f:
        try:
          tree = ast.parse(f.read())
        except (SyntaxError, ValueError):  # lib2to3 fixtures and the like
          continue
      for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
          if text := ast.get_docstring(node):
            yield text


def _plain(first: str) -> str | None:
  """A docstring's first sentence as lowercase words, or None where it is not plain English."""
  first = first.rstrip('.!?')
  words = _PUNCTUATION.sub(' ', first).split()
  if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
    return None
  for word in words:
    if not _WORD.fullmatch(word.lower()):  # digits, symbols, underscores, code
      return None
    if word[1:] != word[1:].lower():  # ALLCAPS acronyms and CamelCase names
      return None
  return ' '.join(words).lower()


@functools.cache
def sentences() -> tuple[str, ...]:
  """The corpus's sentences, sorted: the plain first sentences of the standard library's docstrings."""
  docs = list(_docstrings())
  counts = collections.Counter(w for doc in docs for w in re.findall(r"[a-z']+", doc.lower()))
  found = set()
  for doc in docs:
    paragraph = ' '.join(doc.strip().split('\n\n')[0].split())
    plain = _plain(_SENTENCE_END.split(paragraph)[0])
    # A word the docstrings rarely use is most often an identifier ('mdiff', 'indentwidth').
    if plain and all(counts[w] >= _MIN_WORD_COUNT for w in plain.split()):
      found.add(plain)
  return tuple(sorted(found))


def split_of(sentence: str) -> str:
  """The split that holds `sentence`: the same on every machine (a CRC32, not Python's salted hash)."""
  return {0: 'test', 1: 'validation'}.get(zlib.crc32(sentence.encode()) % 20, 'train')


def split_sentences() -> dict:
  """Split name -> its sentences, in the order they are spoken (a fixed permutation)."""
  every = sentences()
  by_split = {split: [s for s in every if split_of(s) == split] for split in _SPLITS}
  return {split: [texts[i] for i in np.random.default_rng((_SEED, k)).permutation(len(texts))]
          for k, (split, texts) in enumerate(by_split.items())}


def _noise(rng, kind: str, n: int) -> np.ndarray:
  """n samples of unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise."""
  white = rng.standard_normal(n)
  if kind != 'white' and n > 1:
    spectrum = np.fft.rfft(white)
    frequency = np.arange(len(spectrum), dtype=np.float64)
    frequency[0] = np.inf  # no DC: the noise stays centred
    spectrum /= frequency ** (0.5 if kind == 'pink' else 1.0)
    white = np.fft.irfft(spectrum, n)
  return white / max(np.sqrt(np.mean(white ** 2)), 1e-12)


def utterance(split_index: int, attempt: int, text: str, split_voices: tuple) -> dict | None:
  """The `attempt`-th utterance drawn for a split: its features, or None where it runs over MAX_SECONDS.

  A function of its arguments alone (and the constants above), so any process can compute it."""
  rng = np.random.default_rng((_SEED, split_index, attempt))
  voice = split_voices[rng.integers(len(split_voices))]
  rate, pitch = int(rng.integers(RATES[0], RATES[1] + 1)), int(rng.integers(PITCHES[0], PITCHES[1] + 1))
  noise, snr = NOISES[rng.integers(len(NOISES))], float(rng.uniform(*SNR_DB))
  from bigjax.data import espeak  # noqa: PLC0415 (see SAMPLE_RATE)
  clean = espeak.synthesize(text, voice, rate, pitch, SAMPLE_RATE)
  if not len(clean) or len(clean) > MAX_SECONDS * SAMPLE_RATE:
    return None
  signal = clean.astype(np.float64)
  scale = np.sqrt(np.mean(signal ** 2) / 10 ** (snr / 10))
  speech = np.clip(np.round(signal + scale * _noise(rng, noise, len(clean))), -32768, 32767).astype(np.int16)
  return {'speech': speech, 'text': text, 'voice': voice, 'rate': rate, 'pitch': pitch, 'noise': noise,
          'snr': np.float32(snr)}


def _utterances(pool, tasks: list):
  """utterance(*task) for every task, in order; with a pool, a block of _BLOCK tasks at a time and the
  next block under way while this one is consumed (so the workers never run far ahead of TFDS)."""
  blocks = [tasks[i:i + _BLOCK] for i in range(0, len(tasks), _BLOCK)]
  if pool is None:
    for block in blocks:
      yield from (utterance(*task) for task in block)
    return
  pending = pool.starmap_async(utterance, blocks[0])
  for i in range(len(blocks)):
    results = pending.get()
    if i + 1 < len(blocks):
      pending = pool.starmap_async(utterance, blocks[i + 1])
    yield from results


def _examples(split: str):
  """(index, features) of SPLIT_SIZES[split] utterances: the split's sentences in turn, each attempt
  with its own voice, rate, pitch and noise, skipping those that run over MAX_SECONDS."""
  size, texts, k = SPLIT_SIZES[split], split_sentences()[split], _SPLITS.index(split)
  tasks = [(k, j, texts[j % len(texts)], voices(split)) for j in range(2 * size)]  # 2x: room to skip
  pool = None
  if WORKERS > 1 and size >= _PARALLEL_FROM:
    # spawn, not fork: the parent may hold threads (JAX, absl), which fork would copy mid-operation.
    pool = multiprocessing.get_context('spawn').Pool(WORKERS)
  try:
    count, seconds = 0, 0.0
    for attempt, example in enumerate(_utterances(pool, tasks)):
      if example is None:
        continue
      yield count, example
      count, seconds = count + 1, seconds + len(example['speech']) / SAMPLE_RATE
      if count % 1000 == 0 or count == size:
        logging.info('spoken_corpus %s: %d / %d utterances, %.2f hours (%d over %s s skipped)', split, count,
                     size, seconds / 3600, attempt + 1 - count, MAX_SECONDS)
      if count == size:
        return
    raise RuntimeError(f'spoken_corpus {split}: only {count} of {size} utterances fit in {MAX_SECONDS} s')
  finally:
    if pool:
      pool.terminate()


class SpokenCorpus(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'stdlib docstring sentences spoken by eSpeak NG voices, held-out voices.'}

  def _info(self):
    from bigjax.data import espeak  # noqa: PLC0415 (see SAMPLE_RATE)
    made_with = espeak.version()
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{__doc__}\nSynthesized with {made_with} from Python {platform.python_version()}.',
        features=tfds.features.FeaturesDict({
            # 16 kHz. BYTES: 2 bytes a sample; the default (an int64 list) takes about 3x as many.
            'speech': tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding='bytes'),
            'text': tfds.features.Text(),
            'voice': tfds.features.Text(),
            'rate': tfds.features.Tensor(shape=(), dtype=np.int32),  # words per minute
            'pitch': tfds.features.Tensor(shape=(), dtype=np.int32),
            'noise': tfds.features.Text(),
            'snr': tfds.features.Tensor(shape=(), dtype=np.float32),  # dB
        }),
        supervised_keys=('speech', 'text'),
        disable_shuffling=True,  # record i is utterance i: the same corpus on every build
        metadata=tfds.core.MetadataDict({'synthesizer': made_with, 'sample_rate': SAMPLE_RATE,
                                         'python': platform.python_version()}),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    # TFDS sorts a split in memory up to 1 GB and spills a larger one to disk through tf.io.gfile,
    # which needs TensorFlow: the train split (about 1 GB) stays in memory.
    with mock.patch.object(shuffle, 'MAX_MEM_BUFFER_SIZE', max(shuffle.MAX_MEM_BUFFER_SIZE, _MEMORY_BUFFER)):
      return super()._download_and_prepare(dl_manager, download_config)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in _SPLITS}

  def _generate_examples(self, split):
    yield from _examples(split)
