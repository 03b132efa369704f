"""docs/extending.md's worked examples, read from the page itself: a new model, a new task and an
experiment using both train, evaluate, resume and validate like the built-in ones."""

import os
import re
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from bigjax import models, sharding, tasks, train
from bigjax.config import ConfigError, validate
from bigjax.data import pipeline
from helpers import REPO, assert_resumed, read_metrics


def _examples() -> dict:
  """path -> module for each ```python block of docs/extending.md that starts with '# <path>'."""
  with open(os.path.join(REPO, 'docs', 'extending.md')) as f:
    blocks = re.findall(r'```python\n# (\S+)\n(.*?)```', f.read(), re.DOTALL)
  modules = {}
  for path, code in blocks:
    module = types.ModuleType(os.path.splitext(os.path.basename(path))[0])
    exec(compile(code, path, 'exec'), module.__dict__)  # noqa: S102 (the page's own example)
    modules[path] = module
  return modules


@pytest.fixture
def registered(monkeypatch, data_dir):
  examples = _examples()
  assert sorted(examples) == ['bigjax/models/resmlp.py', 'bigjax/tasks/calibration.py',
                              'experiments/digits_resmlp.py']
  monkeypatch.setitem(models.MODELS, 'resmlp', examples['bigjax/models/resmlp.py'].ResMLP)
  monkeypatch.setitem(tasks.TASKS, 'calibration', examples['bigjax/tasks/calibration.py'])
  config = examples['experiments/digits_resmlp.py'].get_config()
  config.data.data_dir = data_dir
  config.train.update({'steps': 150, 'eval_every': 0, 'log_every': 50})
  config.checkpoint.every = 100
  return config


def test_the_worked_model_and_task_train_evaluate_and_resume(registered, tmp_path, caplog):
  config = registered
  validate(config)
  workdir = str(tmp_path / 'run')
  test = train.train_and_evaluate(config, workdir)
  assert test['accuracy'] >= 0.9 and 0 < test['ece'] < 0.2, test
  losses = [r['loss'] for r in read_metrics(workdir, 'train')]
  assert losses[-1] < losses[0] / 3

  # ECE from the restored model's own test predictions, in numpy, equals the task's sums.
  s = train.setup(config, workdir)
  with sharding.active(s.mesh, s.rules):
    state, _ = train.restore_newest(s, config, workdir)
    batch = next(pipeline.eval_batches(s.dataset.splits['test'], s.dataset.preprocess, 360))
    logits = np.asarray(s.model.apply({'params': state.params}, batch['inputs']), np.float64)
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  probabilities /= probabilities.sum(-1, keepdims=True)
  confidence, correct = probabilities.max(-1), probabilities.argmax(-1) == batch['label']
  which = np.minimum((confidence * 10).astype(int), 9)
  ece = sum(abs(correct[which == b].sum() - confidence[which == b].sum()) for b in range(10)) / 360
  assert test['ece'] == pytest.approx(ece, abs=1e-5)

  # Resume comes for free: a longer run restarts at the last checkpoint, not from 0.
  caplog.set_level('INFO')
  config.train.steps, config.optim.schedule = 200, 'constant'  # constant: train.steps may grow
  config.checkpoint.allow_config_change = True  # the schedule changed on purpose
  train.train_and_evaluate(config, workdir)
  assert_resumed(caplog.text, workdir, 150)


def test_the_worked_examples_get_the_one_line_checks(registered):
  registered.model.width_multiplier = 2
  with pytest.raises(ConfigError, match=r'model.width_multiplier=2 is invalid: resmlp takes activation, '
                                        r'depth, dropout, width'):
    validate(registered)
  del registered.model['width_multiplier']
  registered.task.bins = 0
  with pytest.raises(ConfigError, match='task.bins=0 is invalid: use at least one bin'):
    validate(registered)


def test_the_worked_model_names_every_parameter_for_sharding(registered):
  model = models.build(registered.model, 10)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64), np.float32)))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == 2 * (2 + 2 * registered.model.depth)  # kernel and bias of every layer
  assert all(isinstance(leaf, nn.LogicallyPartitioned) and all(leaf.names) for leaf in leaves)
