"""Sequence to sequence: the encoder-decoder's cached decoding against its full forward pass, text
pairs from TFDS (mock data) and from Debian's lists (a small fake set, offline), the host scorer
against sacrebleu, a training run end to end with --mode=generate, a resume after SIGKILL, and the
fsdp memory of the WMT config by --dry_run."""

import json
import signal
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sacrebleu
import tensorflow_datasets as tfds

from bigjax import cpu, data, decode, tasks
from bigjax.config import base_config
from bigjax.data import pairs, tokenizers
from bigjax.models.seq2seq import TransformerSeq2Seq
from helpers import assert_resumed, read_metrics, run_main, signal_when, start_main

WORDS = ['file', 'tool', 'library', 'network', 'music', 'game', 'image', 'text', 'mail', 'font', 'clock',
         'print', 'disk', 'audio', 'video', 'python', 'editor', 'viewer', 'server', 'client']
GERMAN = ['Datei', 'Werkzeug', 'Bibliothek', 'Netzwerk', 'Musik', 'Spiel', 'Bild', 'Text', 'Post',
          'Schrift', 'Uhr', 'Druck', 'Platte', 'Ton', 'Film', 'Python', 'Editor', 'Betrachter', 'Server',
          'Klient']


def _stanza(package, md5, lang, synopsis, body):
  return f'Package: {package}\nDescription-md5: {md5}\nDescription-{lang}: {synopsis}\n {body}\n'


@pytest.fixture(scope='module')
def lists(tmp_path_factory):
  """Apt lists of 200 made-up packages whose English and German descriptions pair word by word."""
  folder = tmp_path_factory.mktemp('lists')
  en, de, packages = [], [], []
  for i in range(200):
    a, b = i % len(WORDS), (i * 7 + 3) % len(WORDS)
    name, md5 = f'pkg{i}', f'{i:032x}'
    packages.append(f'Package: {name}\nSource: src{i}\nDescription-md5: {md5}\n')
    en.append(_stanza(name, md5, 'en', f'{WORDS[a]} {WORDS[b]} {i}',
                      f'The {WORDS[a]} and the {WORDS[b]} number {i} for everyone.'))
    de.append(_stanza(name, md5, 'de', f'{GERMAN[a]} {GERMAN[b]} {i}',
                      f'Die {GERMAN[a]} und die {GERMAN[b]} Nummer {i} für alle.'))
  main = 'deb.debian.org_debian_dists_bookworm_main'
  (folder / f'{main}_binary-amd64_Packages').write_text('\n'.join(packages))
  (folder / f'{main}_i18n_Translation-en').write_text('\n'.join(en))
  (folder / f'{main}_i18n_Translation-de').write_text('\n'.join(de))
  return folder


def _args(lists, data_dir, workdir, *extra):
  return ['--config=experiments/translate.py:offline', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.data.source_dir={lists}',
          '--config.data.vocab_size=400', '--config.data.seq_len=24', '--config.data.target_len=24',
          '--config.data.bucket=0', '--config.model.num_layers=1', '--config.model.num_decoder_layers=1',
          '--config.model.d_model=32', '--config.model.num_heads=2', '--config.train.batch_size=16',
          '--config.train.steps=12', '--config.train.log_every=4', '--config.checkpoint.every=4',
          '--config.optim.warmup_steps=2', '--config.task.beam_size=2',
          '--config.task.eval_generate_examples=8', *extra]


# 20-26 s each, which CI cannot spare: `pytest -m slow` runs them (CI decodes through the cache end to
# end in test_translation_trains_generates_and_writes_its_scores).
@pytest.mark.slow
@pytest.mark.parametrize('scan, copy', [(True, False), (False, True)])
def test_the_cached_decoder_gives_the_full_forward_pass_logits(scan, copy):
  model = TransformerSeq2Seq(50, num_layers=2, num_decoder_layers=3, d_model=32, num_heads=4, dropout=0.0,
                             scan_layers=scan, positions='learned' if scan else 'rope', shared_embedding=scan,
                             tied_embedding=not copy, pointer=copy)
  source = jnp.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
  targets = jnp.array([[1, 20, 21, 22, 23], [1, 30, 31, 32, 33]])
  variables = nn.meta.unbox(model.init(jax.random.key(0), source, targets))
  full = model.apply(variables, source, targets)
  memory = model.apply(variables, source, method=model.encode)
  zeros = jnp.zeros((2, 5), jnp.int32)
  cache = model.init(jax.random.key(0), None, zeros, memory=memory, decode=True)['cache']
  steps = []
  for t in range(5):
    logits, updated = model.apply({'params': variables['params'], 'cache': cache}, None, targets[:, t:t + 1],
                                  memory=memory, decode=True, positions=jnp.full((2, 1), t),
                                  mutable=['cache'])
    cache = updated['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)
  # Padding in the source changes nothing: the first row without its two pads.
  np.testing.assert_allclose(model.apply(variables, source[:1, :4], targets[:1]), full[:1], atol=1e-5)


@pytest.mark.slow  # 50 s; tests/test_decode.py checks beam 1 against greedy on toy models in CI
def test_beam_search_of_one_beam_is_greedy_on_the_encoder_decoder():
  model = TransformerSeq2Seq(30, num_layers=1, d_model=32, num_heads=2, dropout=0.0)
  source = jax.random.randint(jax.random.key(1), (3, 7), 3, 30)
  variables = nn.meta.unbox(model.init(jax.random.key(0), source, source))
  common = dict(max_length=9, alpha=0.0, bos_id=1, eos_id=2)
  greedy = decode.seq2seq_generate(model, variables, source, beam_size=1, **common)
  # Greedy by hand: the full forward pass over the prefix, one token at a time.
  prefix = jnp.ones((3, 1), jnp.int32)
  for _ in range(9):
    prefix = jnp.concatenate([prefix, model.apply(variables, source, prefix)[:, -1].argmax(-1)[:, None]], 1)
  for row, expected in zip(np.asarray(greedy), np.asarray(prefix[:, 1:])):
    end = list(row).index(2) + 1  # every output ends with EOS: chosen, or forced at max_length
    np.testing.assert_array_equal(row[:end - 1], expected[:end - 1])
    assert expected[end - 1] == 2 or end == 9
  assert decode.seq2seq_generate(model, variables, source, beam_size=3, **common).shape == (3, 9)


@pytest.mark.parametrize('name, source, target', [('wmt14_en_de', 'en', 'de'),
                                                  ('cnn_dailymail', 'article', 'highlights'),
                                                  ('xsum', 'document', 'summary')])
def test_tfds_text_pairs_read_as_source_and_shifted_target(name, source, target, tmp_path):
  c = base_config().data
  c.update({'name': name, 'data_dir': str(tmp_path), 'tokenizer': 'byte', 'seq_len': 40, 'target_len': 12})
  with tfds.testing.mock_data(num_examples=6):
    dataset = data.load(c)
  assert data.DATASETS[name].text_feature == source and data.DATASETS[name].target_feature == target
  batch = dataset.preprocess(dataset.splits['train'].read(np.arange(4)))
  assert batch['inputs'].shape == (4, 40)
  assert batch['targets'].shape == batch['decoder_inputs'].shape == (4, 12)
  np.testing.assert_array_equal(batch['decoder_inputs'][:, 0], tokenizers.BOS)
  np.testing.assert_array_equal(batch['decoder_inputs'][:, 1:], batch['targets'][:, :-1])
  ends = [list(row).index(tokenizers.EOS) for row in batch['targets']]  # every target ends with EOS
  assert all(row[end + 1:].sum() == 0 for row, end in zip(batch['targets'], ends))


def test_the_scorer_reports_sacrebleu_on_the_real_rows(lists, tmp_path):
  from experiments import translate
  c = translate.get_config('offline')
  c.data.update({'data_dir': str(tmp_path), 'source_dir': str(lists), 'vocab_size': 400, 'seq_len': 24,
                 'target_len': 24})
  dataset = data.load(c.data)
  task = tasks.build(c.task, dataset)
  split = dataset.splits['test']
  batch = {**dataset.preprocess(split.read(np.arange(4))), 'mask': np.array([1, 1, 1, 0])}
  outputs = batch['targets'].copy()
  outputs[0] = batch['targets'][1]  # one wrong output; the padding row's never counts
  scores, examples = task.score([batch], [outputs])
  references = [pairs.text_of(dataset.tokenizer, row) for row in batch['targets'][:3]]
  hypotheses = [references[1], references[1], references[2]]
  assert scores['bleu'] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
  assert scores['chrf'] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
  assert scores['generated'] == 3 and examples[0]['output'] == references[1]


@pytest.mark.slow  # 26 s: CI's budget (the scorers and decoding have their own tests here)
def test_translation_trains_generates_and_writes_its_scores(lists, tmp_path):
  workdir = tmp_path / 'run'
  result = run_main(*_args(lists, tmp_path / 'data', workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  test = read_metrics(workdir, 'test')[-1]
  assert 0 <= test['bleu'] <= 100 and 0 <= test['chrf'] <= 100, test
  assert test['generated'] == 26  # the whole test split: 13 descriptions' synopsis and paragraph
  train = read_metrics(workdir, 'train')
  assert train[-1]['loss'] < train[0]['loss']
  details = [json.loads(line) for line in (workdir / 'details.jsonl').read_text().splitlines()]
  assert {'source', 'reference', 'output'} <= set(details[-1]['examples'][0])
  generated = run_main(*_args(lists, tmp_path / 'data', workdir, '--mode=generate', '--text=the file tool',
                              '--text=music'))
  assert generated.returncode == 0, generated.stderr[-3000:]
  lines = [json.loads(line) for line in generated.stdout.splitlines()]
  assert [line['source'] for line in lines] == ['the file tool', 'music']
  assert all(isinstance(line['output'], str) for line in lines)


@pytest.mark.slow  # three processes' start-up, 8 s, for three one-line errors: CI's 15 minutes
def test_generate_needs_a_pair_config_and_a_text():
  result = run_main('--config=experiments/digits_mlp.py', '--mode=generate', '--text=x')
  assert result.returncode == 2 and 'needs a sequence-to-sequence config' in result.stderr
  result = run_main('--config=experiments/translate.py:offline', '--mode=generate')
  assert result.returncode == 2 and 'needs at least one --text' in result.stderr
  result = run_main('--config=experiments/translate.py:offline', '--config.task.name=classification')
  assert result.returncode == 2 and 'use seq2seq for a text pair dataset' in result.stderr


@pytest.mark.slow  # a run, an export and its beam search compiled: about 40 s
def test_an_exported_translator_generates_as_the_generate_mode_does(lists, tmp_path):
  from bigjax import export  # noqa: PLC0415
  from bigjax.serving import load  # noqa: PLC0415
  workdir = tmp_path / 'run'
  assert run_main(*_args(lists, tmp_path / 'data', workdir)).returncode == 0
  texts = ['the file tool', 'music for everyone']
  flags = _args(lists, tmp_path / 'data', workdir, '--mode=generate', *(f'--text={t}' for t in texts))
  generated = run_main(*flags)
  assert generated.returncode == 0, generated.stderr[-3000:]
  model = load.load(export.export(str(workdir)))
  assert model.task == 'generate' and model.metadata['inputs'][0]['shape'] == ['b', 't']
  model.warm(max_batch=2)
  outputs = model.run([model.prepare({'text': t}) for t in texts])
  expected = [json.loads(line)['output'] for line in generated.stdout.splitlines()]
  assert [o['output'] for o in outputs] == expected
  with pytest.raises(load.TooLarge, match='at most 24'):
    model.prepare({'text': ' '.join(['music'] * 30)})


@pytest.mark.slow
def test_a_seq2seq_run_killed_and_resumed_ends_where_an_unbroken_one_does(lists, tmp_path):
  reference = tmp_path / 'reference'
  assert run_main(*_args(lists, tmp_path / 'data', reference)).returncode == 0
  workdir = tmp_path / 'killed'
  proc = start_main(*_args(lists, tmp_path / 'data', workdir))
  assert signal_when(proc, (workdir / 'checkpoints' / '4').exists, signal.SIGKILL), 'it ended first'
  result = run_main(*_args(lists, tmp_path / 'data', workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert_resumed(result.stderr, workdir, 4)
  for split in ('eval', 'test'):
    ours, theirs = read_metrics(workdir, split)[-1], read_metrics(reference, split)[-1]
    assert {k: v for k, v in ours.items() if k != 'time'} == {k: v for k, v in theirs.items() if k != 'time'}


def test_dry_run_of_the_wmt_config_shards_params_and_optimizer_over_fsdp():
  """Without WMT prepared: a placeholder of the configured shapes (here shrunk to compile fast)."""
  result = run_main('--config=experiments/translate.py:wmt14_base', '--dry_run', '--config.mesh.data=1',
                    '--config.mesh.fsdp=8', '--config.model.num_layers=1',
                    '--config.model.num_decoder_layers=1',
                    '--config.data.seq_len=16', '--config.data.target_len=16', '--config.train.batch_size=8',
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.splitlines()[-1])
  per_device = report['per_device_bytes']['params'] + report['per_device_bytes']['opt_state']
  replicated = 3 * 4 * report['params']  # float32 params, Adam's two moments
  assert per_device <= replicated / 7, report
  assert 'placeholder' in result.stderr


@pytest.mark.slow
def test_the_copy_head_gives_log_probabilities_that_can_point_at_source_tokens():
  model = TransformerSeq2Seq(50, num_layers=1, d_model=32, num_heads=4, dropout=0.0, pointer=True)
  source = jnp.array([[45, 46, 47, 0]])
  targets = jnp.array([[1, 45, 46]])
  variables = nn.meta.unbox(model.init(jax.random.key(0), source, targets))
  log_probs = model.apply(variables, source, targets)
  np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, atol=1e-5)  # a distribution, no softmax needed
  # A gate shut on the vocabulary: all the mass on the source's tokens, none on its padding's id.
  variables['params']['copy']['gate_bias'] = jnp.full((1,), -30.0)
  probs = jnp.exp(model.apply(variables, source, targets))
  np.testing.assert_allclose(probs[..., 45:48].sum(-1), 1.0, atol=1e-5)
  assert float(probs[..., 0].max()) < 1e-6


# 19-26 s each, which CI cannot spare; CI trains and decodes through the fused path end to end.
@pytest.mark.slow
@pytest.mark.parametrize('scan', [True, False])
def test_the_fused_memory_key_value_matmul_computes_the_same_model(scan, monkeypatch):
  """Every decoder layer's cross-attention keys and values in one matmul (CPU) or a pair per layer
  (elsewhere): one parameter tree, the same logits and gradients."""
  model = TransformerSeq2Seq(50, num_layers=1, num_decoder_layers=2, d_model=32, num_heads=4, dropout=0.0,
                             scan_layers=scan, pointer=True)
  source, targets = jnp.array([[5, 6, 7, 0], [8, 9, 10, 11]]), jnp.array([[1, 20, 21], [1, 30, 31]])

  def run(fused):
    monkeypatch.setattr(cpu, 'fuse_qkv', lambda: fused)
    params = nn.meta.unbox(model.init(jax.random.key(0), source, targets))['params']
    loss = jax.jit(lambda p: jnp.sum(jnp.sin(model.apply({'params': p}, source, targets))))
    return params, jax.value_and_grad(loss)(params)

  (fused_params, fused), (params, unfused) = run(True), run(False)
  assert jax.tree.map(jnp.shape, fused_params) == jax.tree.map(jnp.shape, params)
  for a, b in zip(jax.tree.leaves((fused_params, fused)), jax.tree.leaves((params, unfused))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_the_loss_from_integer_labels_is_the_smoothed_one_hot_cross_entropy_and_accuracy_argmax():
  train = types.SimpleNamespace(read=lambda indices: {'targets': np.zeros((1, 8), np.int32)})
  dataset = types.SimpleNamespace(tokenizer=types.SimpleNamespace(pad_id=0, bos_id=1, eos_id=2),
                                  preprocess=lambda batch: batch, splits={'train': train})
  logits = jnp.round(jax.random.normal(jax.random.key(0), (4, 6, 40)) * 2)  # rounded: many tied maxima
  targets = jax.random.randint(jax.random.key(1), (4, 6), 0, 40).at[0].set(logits[0].argmax(-1))
  weights = (targets != 0).astype(jnp.float32)
  for smoothing in (0.0, 0.1):
    config = base_config().task
    config.update({'name': 'seq2seq', 'metrics': 'translation', 'label_smoothing': smoothing, 'beam_size': 1,
                   'length_penalty': 0.0, 'eval_generate_examples': 0, 'max_length_ratio': 1.0})
    loss = tasks.seq2seq.make(config, dataset)['loss']
    value, metrics = jax.jit(loss)(logits, {'targets': targets})
    labels = optax.smooth_labels(jax.nn.one_hot(targets, 40), smoothing)
    want = (optax.softmax_cross_entropy(logits, labels) * weights).sum() / weights.sum()
    np.testing.assert_allclose(value, want, rtol=1e-6)
    correct = ((logits.argmax(-1) == targets) * weights).sum() / weights.sum()
    assert float(metrics['accuracy']) == pytest.approx(float(correct)) and float(correct) > 0


def test_argmax_equals_is_argmax_with_ties_on_cpu():
  from bigjax.cpu.argmax import argmax_equals  # noqa: PLC0415
  rng = np.random.default_rng(0)
  logits = rng.integers(-3, 3, (8, 16, 37)).astype(np.float32)  # small integers: many tied maxima
  labels = rng.integers(0, 37, (8, 16))
  labels[0] = logits[0].argmax(-1)
  np.testing.assert_array_equal(jax.jit(argmax_equals)(logits, labels), logits.argmax(-1) == labels)


@pytest.mark.slow  # the MFU figure's formula, not a result: 13 s of CI
def test_model_flops_match_xlas_count_of_a_train_step():
  """The encoder-decoder's FLOPs formula (MFU, and the TPU dry run's roofline) against XLA's count of
  forward and backward, unscanned; XLA counts the elementwise work too, a few percent more."""
  import ml_collections  # noqa: PLC0415

  from bigjax import models  # noqa: PLC0415
  fields = {'num_layers': 2, 'num_decoder_layers': 1, 'd_model': 128, 'num_heads': 4, 'dropout': 0.0,
            'scan_layers': False, 'shared_embedding': True, 'tied_embedding': False}
  model = TransformerSeq2Seq(1000, **fields)
  source, targets = jnp.ones((4, 48), jnp.int32), jnp.ones((4, 32), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), source, targets))['params']
  num_params = sum(x.size for x in jax.tree.leaves(params))
  loss = lambda p: jnp.sum(model.apply({'params': p}, source, targets))
  xla = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()['flops'] / 4
  config = ml_collections.ConfigDict({'name': 'transformer_seq2seq', **fields})
  ours = models.flops_per_example(config, num_params, (48,), (32,))
  assert 0.95 < xla / ours < 1.1, (xla, ours)  # 0.99 here
