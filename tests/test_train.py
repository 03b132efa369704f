"""The trainer, in process: what a run writes, exact resume, eval mode, full-batch GD."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from bigjax import train, writers
from bigjax.config import base_config
from helpers import RATES, assert_resumed, final_state, overridden, read_metrics


def _config(data_dir, **overrides):
  c = base_config()
  c.data.data_dir = data_dir
  c.model.update({'depth': 1, 'width': 64, 'dropout': 0.1})
  c.optim.schedule = 'cosine'
  c.optim.lr = 3e-3
  c.train.update({'steps': 200, 'batch_size': 64, 'eval_every': 100, 'log_every': 50})
  c.checkpoint.update({'every': 50, 'keep': 10})
  return overridden(c, **overrides)


@pytest.fixture(scope='module')
def short_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('short'))
  config = _config(data_dir)
  return config, workdir, train.train_and_evaluate(config, workdir)


def test_run_writes_logs_checkpoints_and_learns(short_run):
  config, workdir, test_metrics = short_run
  records = read_metrics(workdir)
  assert [(r['step'], r['split']) for r in records] == [
      (50, 'train'), (100, 'train'), (100, 'eval'), (150, 'train'), (200, 'train'), (200, 'eval'),
      (200, 'test')]
  for r in records:
    assert isinstance(r['step'], int) and r['time'] >= 0
  # It learns: each log interval's mean train loss below the one before; eval better at 200 than at 100.
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert all(b < a for a, b in zip(train_losses, train_losses[1:])), train_losses
  evals = [r for r in records if r['split'] == 'eval']
  assert evals[1]['loss'] < evals[0]['loss'], evals
  test = records[-1]
  assert test['accuracy'] == test_metrics['accuracy'] >= 0.9
  assert {'precision', 'recall', 'f1', 'f1_macro'} <= set(test)
  with open(os.path.join(workdir, 'details.jsonl')) as f:
    details = [json.loads(line) for line in f]
  assert np.sum(details[-1]['confusion_matrix']) == 360  # every test example, once
  # Each eval and test accuracy is its confusion matrix's: correct over counted.
  scored = [r for r in records if r['split'] != 'train']
  assert [(d['step'], d['split']) for d in details] == [(r['step'], r['split']) for r in scored]
  for record, detail in zip(scored, details):
    counts = np.array(detail['confusion_matrix'])
    assert record['accuracy'] == pytest.approx(np.trace(counts) / counts.sum(), rel=1e-6)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['steps'] == 200
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['100', '150', '200', '50']


def test_eval_mode_reproduces_the_final_test_metrics(short_run, capsys):
  config, workdir, test_metrics = short_run
  results = train.evaluate_checkpoint(config, workdir)
  assert results['test']['accuracy'] == test_metrics['accuracy']
  assert results['test']['loss'] == test_metrics['loss']
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(p['step'], p['split']) for p in printed] == [(200, 'eval'), (200, 'test')]


@pytest.mark.parametrize('model', ['mlp', pytest.param('resnet', marks=pytest.mark.slow)])  # resnet: 21 s
def test_resume_is_bitwise_identical(model, data_dir, tmp_path, caplog):
  overrides = {'train__steps': 60, 'checkpoint__every': 20, 'train__eval_every': 30, 'train__log_every': 10}
  if model == 'resnet':
    overrides.update({'model__name': 'resnet'})
  config = _config(data_dir, **overrides)
  if model == 'resnet':  # the MLP's fields do not apply
    del config.model['depth'], config.model['width'], config.model['dropout']
    config.model.stage_sizes, config.model.width = (1,), 8
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  train.train_and_evaluate(config, a)
  train.train_and_evaluate(config, b)
  # Pretend b died just before step 40's checkpoint: drop what came after 20.
  for step in ('40', '60'):
    shutil.rmtree(os.path.join(b, 'checkpoints', step))
  caplog.set_level('INFO')  # the resume line is INFO
  caplog.clear()
  train.train_and_evaluate(config, b)
  assert_resumed(caplog.text, b, 20)
  state_a, state_b = final_state(config, a), final_state(config, b)
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(x, y)
  if model == 'resnet':
    assert jax.tree.leaves(state_a.model_state['batch_stats'])  # BatchNorm statistics are in the state
  # Every logged number matches too (log intervals divide the checkpoint interval here).
  untimed = lambda w: [{k: v for k, v in r.items() if k not in RATES} for r in read_metrics(w)]  # noqa: E731
  assert untimed(a) == untimed(b)


def test_full_batch_gradient_descent_decreases_loss_every_step(data_dir, tmp_path):
  config = _config(data_dir, train__batch_size=-1, train__steps=25, train__log_every=1,
                   optim__name='sgd', optim__lr=0.05, optim__schedule='constant', model__dropout=0.0)
  train.train_and_evaluate(config, str(tmp_path))
  losses = [r['loss'] for r in read_metrics(str(tmp_path), 'train')]
  assert len(losses) == 25 and all(b < a for a, b in zip(losses, losses[1:]))


def test_logs_are_strict_json_with_null_for_nan_and_infinity(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), resume_step=0)
  writer.write(10, 'eval', {'loss': float('nan'), 'accuracy': 0.5, 'perplexity': np.inf,
                            'per_class_f1': np.array([0.25, np.nan])})
  writer.close()

  def strict(name):  # json.loads accepts NaN and Infinity unless told otherwise
    with open(tmp_path / name) as f:
      return [json.loads(line, parse_constant=lambda c: pytest.fail(f'{name} holds {c}')) for line in f]
  [record] = strict('metrics.jsonl')
  assert (record['loss'], record['accuracy'], record['perplexity']) == (None, 0.5, None)
  assert strict('details.jsonl')[0]['per_class_f1'] == [0.25, None]
