"""Knowledge distillation: the loss, a frozen teacher, exact resume, and what a bad teacher gets."""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import checkpoint, distill, sharding, tasks, train
from bigjax.config import ConfigError, base_config, config_changes
from bigjax.models.lstm import LSTMClassifier
from bigjax.models.mlp import MLP
from helpers import assert_resumed, final_state, overridden, read_metrics, run_main


def _config(data_dir, **overrides):
  c = base_config()
  c.data.data_dir = data_dir
  c.model.update({'depth': 1, 'width': 32})
  c.train.update({'steps': 40, 'batch_size': 64, 'eval_every': 0, 'log_every': 10})
  c.checkpoint.update({'every': 20, 'keep': 10})
  return overridden(c, **overrides)


@pytest.fixture(scope='module')
def teacher_dir(data_dir, tmp_path_factory):
  """A small ResNet: its BatchNorm statistics are teacher state the student must read too."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  c = _config(data_dir, model__name='resnet', train__steps=10)
  del c.model['depth'], c.model['width']
  c.model.stage_sizes, c.model.width = (1,), 8
  train.train_and_evaluate(c, workdir)
  return workdir


def _digest(path) -> str:
  h = hashlib.sha256()
  for root, _, names in sorted(os.walk(path)):
    for name in sorted(names):
      h.update(name.encode())
      with open(os.path.join(root, name), 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


class _Dataset:
  num_classes, tokenizer = 10, None


def test_kl_loss_is_hintons():
  student, teacher = (jax.random.normal(jax.random.key(i), (2, 4, 10)) for i in (0, 1))
  weights, t = jnp.array([[1.0, 1, 1, 0], [1, 1, 0, 0]]), 3.0
  p = jax.nn.softmax(teacher / t)
  per_position = (p * (jnp.log(p) - jax.nn.log_softmax(student / t))).sum(-1)
  want = t * t * (per_position * weights).sum() / weights.sum()
  np.testing.assert_allclose(distill.kl_loss(student, teacher, weights, t), want, rtol=1e-5)
  assert float(distill.kl_loss(student, student, weights, t)) == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_gives_the_task_losss_gradient():
  task = tasks.build(overridden(base_config(), task__name='classification').task, _Dataset())
  student, teacher = MLP(num_outputs=10, depth=1, width=16), MLP(num_outputs=10, depth=1, width=32)
  x, labels = jax.random.normal(jax.random.key(0), (8, 8, 8, 1)), jnp.arange(8) % 10
  batch = {'inputs': x, 'label': labels}
  params = student.init(jax.random.key(1), x)['params']
  frozen = {'params': teacher.init(jax.random.key(2), x)['params'], 'model_state': {}}
  t = distill.Teacher(teacher, None, '', 0)

  def grad(objective):
    return jax.grad(lambda p: objective(student.apply({'params': p}, x), batch, frozen, {})[0])(params)
  plain = grad(lambda outputs, batch, frozen, rngs: task.loss(outputs, batch))
  for alpha, same in ((0.0, True), (0.5, False)):
    config = overridden(base_config(), distill__alpha=alpha, distill__temperature=2.0).distill
    got = grad(distill.objective(task, t, config))
    equal = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True)]
    assert all(equal) if same else not any(equal), (alpha, equal)


def test_a_noisy_teacher_drops_the_same_words_as_its_student():
  """teacher_noise: a teacher that is the student itself, seeing the student's word dropout, agrees
  with it exactly (KL 0); without it, the teacher reads every word and disagrees."""
  task = tasks.build(overridden(base_config(), task__name='classification').task, _Dataset())
  model = LSTMClassifier(num_outputs=10, vocab_size=50, embed_dim=8, hidden=8, word_dropout=0.5,
                         dropout=0.3, pooling='max', cpu_kernel=False)
  tokens = jax.random.randint(jax.random.key(0), (4, 12), 1, 50)
  batch = {'inputs': tokens, 'label': jnp.arange(4)}
  params = model.init(jax.random.key(1), tokens)['params']
  rngs = {'dropout': jax.random.key(2)}
  outputs = model.apply({'params': params}, tokens, train=True, rngs=rngs)
  frozen = {'params': params, 'model_state': {}}
  t = distill.Teacher(model, None, '', 0)
  soft = {}
  for noise in (True, False):
    config = overridden(base_config(), distill__teacher_noise=noise).distill
    soft[noise] = float(distill.objective(task, t, config)(outputs, batch, frozen, rngs)[1]['distill_loss'])
  assert soft[True] == pytest.approx(0.0, abs=1e-6) and soft[False] > 1e-3, soft


@pytest.mark.slow
def test_a_distilled_run_freezes_its_teacher_and_resumes_exactly(teacher_dir, data_dir, tmp_path, caplog):
  before = _digest(os.path.join(teacher_dir, 'checkpoints'))
  config = _config(data_dir, distill__teacher=teacher_dir, distill__alpha=0.7)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  train.train_and_evaluate(config, a)
  train.train_and_evaluate(config, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '40'))  # b died before its last checkpoint
  caplog.set_level('INFO')
  caplog.clear()
  train.train_and_evaluate(config, b)
  assert_resumed(caplog.text, b, 20)
  state_a, state_b = final_state(config, a), final_state(config, b)
  for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(x, y)
  # The teacher's checkpoint is the same bits; the student's holds only the student, and names the teacher.
  assert _digest(os.path.join(teacher_dir, 'checkpoints')) == before
  with open(os.path.join(a, 'teacher.json')) as f:
    assert json.load(f) == {'path': teacher_dir, 'step': 10}
  saved = checkpoint.shapes(state_a)
  assert not [k for k in saved if 'conv' in k.lower() or 'batch_stats' in k], saved
  with open(os.path.join(a, 'metrics.jsonl')) as f:
    first = json.loads(f.readline())
  assert first['loss'] == pytest.approx(0.7 * first['distill_loss'] + 0.3 * first['task_loss'], rel=1e-5)
  # The student evaluates without its teacher, even once the teacher is gone.
  gone = _config(data_dir, distill__teacher=str(tmp_path / 'gone'), distill__alpha=0.7)
  assert train.evaluate_checkpoint(gone, a)['test']['accuracy'] == read_metrics(a, 'test')[-1]['accuracy']


def test_the_train_step_leaves_the_teachers_arrays_untouched(teacher_dir, data_dir):
  config = _config(data_dir, distill__teacher=teacher_dir)
  s = train.setup(config, teacher=True)
  with sharding.active(s.mesh, s.rules):
    s = s._replace(frozen=distill.restore(s.teacher))
    held = jax.device_get(s.frozen)
    step, state = train.make_train_step(s, config), s.init()
    batch = s.dataset.preprocess(s.dataset.splits['train'].read(np.arange(64)))
    for _ in range(3):
      state, _ = step(state, sharding.shard_batch(batch, s.mesh))
    after = jax.device_get(s.frozen)  # a donated or updated teacher would fail here
  assert jax.tree.leaves(held['model_state'])  # BatchNorm statistics came along
  for x, y in zip(jax.tree.leaves(held), jax.tree.leaves(after), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_teacher_that_cannot_teach_is_a_config_error(teacher_dir, data_dir, tmp_path):
  with pytest.raises(ConfigError, match='no config.json'):
    train.setup(_config(data_dir, distill__teacher=str(tmp_path)), teacher=True)
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  shutil.copy(os.path.join(teacher_dir, 'config.json'), untrained / 'config.json')
  with pytest.raises(ConfigError, match='no complete checkpoint'):
    train.setup(_config(data_dir, distill__teacher=str(untrained)), teacher=True)
  # A teacher whose checkpoint does not fit its config: another width.
  with open(os.path.join(teacher_dir, 'config.json')) as f:
    saved = json.load(f)
  other = tmp_path / 'other'
  shutil.copytree(teacher_dir, other)
  saved['model']['width'] = 16
  (other / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match='does not fit'):
    train.setup(_config(data_dir, distill__teacher=str(other)), teacher=True)


def test_a_missing_teacher_is_one_line_and_exit_2(data_dir, tmp_path):
  workdir = tmp_path / 'student'
  result = run_main('--config=experiments/digits_mlp.py', f'--workdir={workdir}',
                    f'--config.data.data_dir={data_dir}', f'--config.distill.teacher={tmp_path / "nowhere"}')
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'config.distill.teacher' in result.stderr.strip().splitlines()[-1]
  assert not workdir.exists()


def test_a_workdir_from_before_distill_and_quant_existed_still_resumes():
  config = base_config()
  saved = json.loads(config.to_json_best_effort())
  del saved['distill'], saved['quant']  # what an older bigjax wrote
  assert config_changes(json.dumps(saved), config) == []
  config.distill.alpha = 0.9  # a real change still counts
  assert config_changes(json.dumps(saved), config) == ["distill.alpha: 0.5 in the workdir, 0.9 now"]
