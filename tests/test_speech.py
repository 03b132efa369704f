"""Speech: the audio data path (ragged utterances, bucketing by duration, LibriSpeech under mock_data),
the ctc task (loss, best path, prefix beam search, WER and CER from jiwer), and a run end to end on a
small spoken corpus: train, --mode=transcribe, bad WAVs, and a SIGKILL and resume."""

import collections
import itertools
import json
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from bigjax import data, metrics
from bigjax.config import ConfigError
from bigjax.data import pipeline, speech, spoken
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.tasks import ctc
from helpers import assert_resumed, read_metrics, run_main, signal_when, start_main


def _data_config(name='librispeech', **fields):
  from experiments import spoken_conformer  # noqa: PLC0415
  c = spoken_conformer.get_config().data
  c.name = name
  c.update(fields)
  return c


def _ragged_split(lengths, seed=0):
  rng = np.random.default_rng(seed)
  audio = [rng.integers(1, 100, n).astype(np.int16) for n in lengths]  # never 0: padding shows
  labels = np.zeros((len(lengths), 4), np.int32)
  arrays = {'audio': pipeline.object_array(audio), 'audio_length': np.array(lengths, np.int32),
            'transcript': labels, 'transcript_length': np.full(len(lengths), 4, np.int32)}
  return pipeline.Split(arrays=arrays, ragged=('audio',))


def test_bucketing_pads_each_batch_of_utterances_to_the_next_bucket_the_same_on_every_host():
  lengths = np.random.default_rng(1).integers(100, 1000, 64)
  split = _ragged_split(lengths)
  preprocess = speech.preprocess_for({'max_seconds': 1000 / speech.SAMPLE_RATE})
  it = pipeline.train_iterator(split, preprocess, 8, seed=3, bucket=128)
  halves = [pipeline.train_iterator(split, preprocess, 8, seed=3, bucket=128, rows=r)
            for r in (range(4), range(4, 8))]
  for _ in range(12):
    batch = next(it)
    width = batch['inputs'].shape[1]
    assert width % 128 == 0 and width - 128 < batch['input_length'].max() <= width
    for row, n in zip(batch['inputs'], batch['input_length']):
      assert (row[:n] != 0).all() and (row[n:] == 0).all()
    parts = [next(h) for h in halves]  # two hosts' rows of the same global batch
    np.testing.assert_array_equal(np.concatenate([p['inputs'] for p in parts]), batch['inputs'])
  seen = [n for b in pipeline.eval_batches(split, preprocess, 8, bucket=128) for n, m in
          zip(b['input_length'], b['mask']) if m]
  assert sorted(seen) == sorted(lengths)  # eval: every utterance once


def test_librispeech_through_mock_data_in_memory_and_from_disk():
  with tfds.testing.mock_data(num_examples=6):
    for in_memory in (True, False):
      config = _data_config(in_memory=in_memory, bucket=8000 if in_memory else 0, max_seconds=40.0,
                            target_len=400)
      ds = data.load(config)
      assert ds.num_classes == 259 and set(ds.splits) == {'train', 'eval', 'test'}
      batch = next(pipeline.eval_batches(ds.splits['test'], ds.preprocess, 4))
      assert batch['inputs'].dtype == np.int16 and batch['labels'].dtype == np.int32
      assert batch['inputs'].shape[1] == 40 * 16000 or in_memory
      assert (batch['label_length'] <= 400).all() and batch['input_length'].dtype == np.int32


def test_speech_config_errors_are_one_line():
  with pytest.raises(ConfigError, match='bucketing by duration needs data.in_memory'):
    data.check_config(_data_config(in_memory=False))
  with pytest.raises(ConfigError, match='speech is spelled in characters'):
    data.check_config(_data_config(tokenizer='word'))
  with pytest.raises(ConfigError, match='data.max_seconds'):
    data.check_config(_data_config(max_seconds=0.0))


def test_transcripts_are_normalized_to_what_is_spoken():
  assert speech.normalize_text(b'HELLO, World!  It\'s 3 PM.') == "hello world it's pm"


def test_ctc_loss_is_optax_per_label_token_and_unalignable_utterances_count_for_nothing():
  task_config = ml_collections.ConfigDict({'beam_size': 1, 'eval_generate_examples': 0})
  task = ctc.make(task_config, data.Dataset('x', 8, {}, None, ByteTokenizer()))
  logits = jax.random.normal(jax.random.key(0), (3, 6, 8))
  valid = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], bool)
  batch = {'labels': jnp.array([[3, 4, 0], [5, 5, 0], [3, 4, 5]]), 'label_length': jnp.array([2, 2, 3]),
           'mask': jnp.ones(3)}
  value, logged = task['loss']((logits, valid), batch)
  per = optax.ctc_loss(logits, 1.0 - valid, batch['labels'], (batch['labels'] == 0).astype(jnp.float32))
  # utterance 2: 3 labels in 2 frames cannot align; the others' loss per label token
  np.testing.assert_allclose(value, (per[0] + per[1]) / 4, rtol=1e-6)
  assert logged['unaligned'] == 1
  sums = task['eval_sums']((logits, valid), batch)
  assert task['summarize'](jax.device_get(sums)) == pytest.approx({'loss': float(value), 'unaligned': 1})


def test_best_path_merges_repeats_and_drops_blanks():
  assert ctc.best_path([0, 3, 3, 0, 3, 4, 4, 0, 5], 8) == [3, 3, 4]


def test_prefix_beam_search_finds_the_most_probable_labelling():
  """Against brute force: every path's probability summed by the labelling it collapses to."""
  rng = np.random.default_rng(0)
  agree_greedy = 0
  for _ in range(20):
    log_probs = np.log(rng.dirichlet(np.full(4, 0.5), size=6))
    totals = collections.defaultdict(float)
    for path in itertools.product(range(4), repeat=6):
      totals[tuple(ctc.best_path(np.array(path), 6))] += np.exp(log_probs[np.arange(6), path].sum())
    best = list(max(totals, key=totals.get))
    assert ctc.prefix_beam_search(log_probs, 6, width=64) == best
    agree_greedy += ctc.best_path(log_probs.argmax(-1), 6) == best
  assert agree_greedy < 20  # the test has cases where best path is not the best labelling


def test_wer_and_cer_are_jiwer_corpus_rates():
  scores = metrics.speech_scores(['the cat sat', 'a dog'], ['the cat sat down', 'the dog'])
  assert scores['wer'] == pytest.approx(2 / 6)  # one deletion, one substitution over six words
  assert scores['cer'] == pytest.approx((5 + 3) / (16 + 7))  # 'down' and its space, 'the' for 'a'


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """A spoken corpus of 48 / 8 / 8 utterances (the builder's own code, smaller), prepared once."""
  data_dir = tmp_path_factory.mktemp('spoken')
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(spoken, 'SPLIT_SIZES', {'train': 48, 'validation': 8, 'test': 8})
    patch.setattr(spoken, 'MAX_SECONDS', 3.0)
    spoken.SpokenCorpus(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


def _args(data_dir, workdir, *more, steps=6):
  return ('--config=experiments/spoken_conformer.py:offline', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.data.max_seconds=3.0',
          '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
          '--config.model.subsample_channels=8', f'--config.train.steps={steps}',
          '--config.train.batch_size=8',
          '--config.train.eval_every=4', '--config.train.log_every=2', '--config.checkpoint.every=2',
          '--config.optim.warmup_steps=0', *more)


@pytest.mark.slow  # 46 s: CI's budget
def test_a_speech_run_trains_scores_and_transcribes(corpus, tmp_path):
  workdir = tmp_path / 'run'
  result = run_main(*_args(corpus, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  test = read_metrics(workdir, 'test')[-1]
  assert test['generated'] == 8 and test['wer'] >= 0 and 0 <= test['cer'], test
  details = [json.loads(line) for line in (workdir / 'details.jsonl').read_text().splitlines()]
  assert {'reference', 'output'} <= set(details[-1]['examples'][0])
  wav = tmp_path / 'a.wav'
  made = run_module('bigjax.data.espeak', '--text=a new sentence', '--voice=en-us+edward', f'--out={wav}')
  assert made.returncode == 0, made.stderr[-2000:]
  out = run_main(*_args(corpus, workdir, '--mode=transcribe', f'--audio={wav}', f'--audio={wav}'))
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [json.loads(line) for line in out.stdout.splitlines()]
  assert [line['audio'] for line in lines] == [str(wav)] * 2 and isinstance(lines[0]['transcript'], str)
  assert lines[0]['transcript'] == lines[1]['transcript'] and 0.5 < lines[0]['seconds'] < 3


def run_module(module, *args):
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from helpers import REPO  # noqa: PLC0415
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.parametrize('content', [pytest.param(None, marks=pytest.mark.slow), b'not a wav at all',
                                     pytest.param(b'', marks=pytest.mark.slow)])  # CI's budget
def test_a_missing_or_malformed_wav_is_one_line_and_exit_2(tmp_path, content):
  path = tmp_path / 'bad.wav'
  if content is not None:
    path.write_bytes(content)
  result = run_main('--config=experiments/spoken_conformer.py:offline', f'--workdir={tmp_path / "run"}',
                    '--mode=transcribe', f'--audio={path}')
  assert result.returncode == 2, result.stderr[-2000:]
  error = [line for line in result.stderr.splitlines() if line.startswith('bigjax: error:')]
  assert len(error) == 1 and str(path) in error[0], result.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_a_ctc_run_killed_and_resumed_ends_where_an_unbroken_one_does(corpus, tmp_path):
  reference = tmp_path / 'reference'
  assert run_main(*_args(corpus, reference)).returncode == 0
  workdir = tmp_path / 'killed'
  proc = start_main(*_args(corpus, workdir))
  assert signal_when(proc, (workdir / 'checkpoints' / '2').exists, signal.SIGKILL), 'it ended first'
  result = run_main(*_args(corpus, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert_resumed(result.stderr, workdir, 2)
  for split in ('eval', 'test'):
    ours, theirs = read_metrics(workdir, split)[-1], read_metrics(reference, split)[-1]
    assert {k: v for k, v in ours.items() if k != 'time'} == {k: v for k, v in theirs.items() if k != 'time'}


def test_a_speech_placeholder_has_the_configured_shapes_for_dry_runs():
  ds = data.placeholder(_data_config(in_memory=False, bucket=0, max_seconds=2.0, target_len=50), rows=4)
  batch = next(pipeline.eval_batches(ds.splits['train'], ds.preprocess, 4))
  assert batch['inputs'].shape == (4, 32000) and batch['inputs'].dtype == np.int16
  assert batch['labels'].shape == (4, 50) and ds.num_classes == 259


@pytest.mark.slow  # a speech run, an export and a transcription: about a minute
def test_an_exported_speech_model_transcribes_as_the_transcribe_mode_does(corpus, tmp_path):
  from bigjax import export  # noqa: PLC0415
  from bigjax.serving import load  # noqa: PLC0415
  workdir = tmp_path / 'run'
  assert run_main(*_args(corpus, workdir, '--config.task.beam_size=1')).returncode == 0
  wav = tmp_path / 'a.wav'
  assert run_module('bigjax.data.espeak', '--text=a new sentence', f'--out={wav}').returncode == 0
  out = run_main(*_args(corpus, workdir, '--config.task.beam_size=1', '--mode=transcribe', f'--audio={wav}'))
  assert out.returncode == 0, out.stderr[-3000:]
  model = load.load(export.export(str(workdir)))
  assert model.metadata['inputs'][0] == {'name': 'inputs', 'shape': ['b', '640*k + 320'], 'dtype': 'int16'}
  model.warm(max_batch=2)
  [result] = model.run([model.prepare({'audio': wav.read_bytes()})])
  assert result['transcript'] == json.loads(out.stdout.splitlines()[0])['transcript']
  with pytest.raises(load.BadInput, match='not a readable WAV'):
    model.prepare({'audio': b'RIFF but not really'})
