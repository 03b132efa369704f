"""The offline spoken corpus: eSpeak NG synthesis (bigjax/data/espeak.py) and the TFDS builder that
speaks the standard library's docstring sentences (bigjax/data/spoken.py)."""

import platform
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.io.wavfile
import tensorflow_datasets as tfds

from bigjax.config import ConfigError
from bigjax.data import espeak, spoken

TEXT = 'return a list of the most frequently occurring values'  # 9 words


def test_synthesize_gives_speech_of_a_plausible_length():
  wav = espeak.synthesize(TEXT)
  assert wav.dtype == np.int16 and wav.ndim == 1
  seconds = len(wav) / espeak.SAMPLE_RATE
  assert 0.3 * 9 <= seconds <= 1.0 * 9
  assert np.abs(wav.astype(np.int32)).max() > 5000  # speech, not silence
  # Trimmed: about 0.1 s of silence at each end, not espeak's own padding.
  assert np.abs(wav[:800].astype(np.int32)).max() <= 200 < np.abs(wav[:2400].astype(np.int32)).max()
  slow, fast = espeak.synthesize(TEXT, rate=120), espeak.synthesize(TEXT, rate=240)
  assert len(slow) > 1.5 * len(fast)


def test_synthesize_is_a_function_of_its_arguments():
  # f2 is breathy: its noise comes from the generator espeak seeds with the time; in between, another
  # voice moves the library's static state on.
  first = espeak.synthesize(TEXT, 'en+f2', 160, 40)
  other = espeak.synthesize(TEXT, 'en-us+m3', 160, 40)
  assert np.array_equal(first, espeak.synthesize(TEXT, 'en+f2', 160, 40))
  assert not np.array_equal(first[:len(other)], other[:len(first)])
  assert not np.array_equal(first, espeak.synthesize(TEXT, 'en+f2', 160, 70))  # pitch changes it


def test_unknown_voice_is_a_config_error():
  for voice in ('en+nobody', 'en-us+F2', 'xx+m3'):  # espeak would speak the first two as plain 'en'
    with pytest.raises(ConfigError, match='no voice'):
      espeak.synthesize('hello', voice)


def test_cli_writes_the_same_16khz_wav(tmp_path):
  out = tmp_path / 'hello.wav'
  subprocess.run([sys.executable, '-m', 'bigjax.data.espeak', '--text', TEXT, '--voice', 'en-us+f2',
                  '--rate', '150', '--pitch', '60', '--out', str(out)], check=True, capture_output=True)
  rate, wav = scipy.io.wavfile.read(out)
  assert rate == 16000 and wav.dtype == np.int16
  # Another process, another second: the same samples.
  np.testing.assert_array_equal(wav, espeak.synthesize(TEXT, 'en-us+f2', 150, 60))


def test_version_names_the_wheel():
  assert re.fullmatch(r'espeakng-loader 0\.2\.4, eSpeak NG \d+\.\d+.*', espeak.version())


@pytest.mark.slow
def test_sentences_are_plain_words_and_deterministic():
  sentences = spoken.sentences()
  assert len(sentences) > 2500
  assert list(sentences) == sorted(set(sentences))
  assert sentences == spoken.sentences.__wrapped__()  # parsed again, not the cached copy
  for s in sentences:
    assert re.fullmatch(r"[a-z']+( [a-z']+){2,11}", s), s
  assert 'delegate a warning call to the underlying logger' in sentences


def test_splits_hold_disjoint_sentences_and_voices():
  splits = spoken.split_sentences()
  sets = {name: set(texts) for name, texts in splits.items()}
  assert sum(map(len, sets.values())) == len(spoken.sentences())
  assert not sets['train'] & sets['validation'] and not sets['validation'] & sets['test']
  assert not sets['train'] & sets['test']
  assert 0.85 < len(sets['train']) / len(spoken.sentences()) < 0.95
  assert splits == spoken.split_sentences()
  voices = {name: set(spoken.voices(name)) for name in splits} | {'unseen': set(spoken.UNSEEN_VOICES)}
  variants = {name: {v.split('+')[1] for v in vs} for name, vs in voices.items()}
  names = list(variants)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not variants[a] & variants[b], (a, b)
  assert all(v.startswith('en') for vs in voices.values() for v in vs)


def test_every_voice_speaks():
  variants = {v for split in spoken.VARIANTS.values() for v in split}
  for voice in [f'en+{v}' for v in sorted(variants)] + [f'{a}+m1' for a in spoken.ACCENTS] + \
      list(spoken.UNSEEN_VOICES):
    assert len(espeak.synthesize('hello there', voice)) > 0.3 * 16000, voice


def _build(data_dir):
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(spoken, 'SPLIT_SIZES', {'train': 12, 'validation': 4, 'test': 4})
    spoken.SpokenCorpus(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return {split: tfds.data_source('spoken_corpus', split=split, data_dir=str(data_dir))
          for split in ('train', 'validation', 'test')}


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return _build(tmp_path_factory.mktemp('spoken'))


def test_built_corpus_holds_the_right_speech(corpus):
  splits = spoken.split_sentences()
  for split, size in {'train': 12, 'validation': 4, 'test': 4}.items():
    source = corpus[split]
    assert len(source) == size
    for i in range(size):
      example = source[i]
      assert example['speech'].dtype == np.int16
      assert 0.5 * 16000 < len(example['speech']) <= spoken.MAX_SECONDS * 16000
      assert example['text'].decode() in splits[split]
      assert example['voice'].decode() in spoken.voices(split)
      assert 140 <= example['rate'] <= 200 and 25 <= example['pitch'] <= 75 and 10 <= example['snr'] <= 30
  # The train split cycles through its sentences in their fixed order.
  assert [corpus['train'][i]['text'].decode() for i in range(12)] == splits['train'][:12]


def test_built_corpus_records_how_it_was_made(corpus, tmp_path):
  del corpus
  data_dir = tmp_path / 'again'
  again = _build(data_dir)
  info = tfds.builder('spoken_corpus', data_dir=str(data_dir)).info
  assert info.metadata['synthesizer'] == espeak.version() and info.metadata['sample_rate'] == 16000
  assert info.metadata['python'] == platform.python_version()
  assert 'eSpeak NG' in info.description
  assert len(again['train']) == 12


def test_two_builds_are_bitwise_identical(corpus, tmp_path):
  again = _build(tmp_path)
  for split, source in corpus.items():
    for i in range(len(source)):
      a, b = source[i], again[split][i]
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
