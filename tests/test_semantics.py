"""Config semantics that hold: what a field promises is what a run does.

A longer train.steps on resume never silently stretches the learning-rate schedule; the global batch
is split over the mesh alone (which spans every host); shard_map with fsdp is refused; a dimension
the mesh cannot split is named in a warning; each model field has one default; the logged learning
rate is the one the optimizer used; on_nonfinite, init_from and allow_config_change do what they say.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigjax import models, optim, sharding, train
from bigjax.config import ConfigError, base_config, config_changes, validate
from bigjax.data import pipeline
from helpers import REPO, final_state, load_script, overridden, read_metrics, run_main

SOURCE_STEPS = 20


def _digits(data_dir, **fields):
  """digits_mlp's own config, shortened, then `section__key` fields."""
  c = load_script(os.path.join(REPO, 'experiments', 'digits_mlp.py')).get_config()
  c.data.data_dir = data_dir
  c.train.update({'steps': SOURCE_STEPS, 'eval_every': 10, 'log_every': 10})
  c.checkpoint.every = 10
  return overridden(c, **fields)


@pytest.fixture(scope='module')
def source(data_dir, tmp_path_factory):
  """A finished 20-step digits_mlp run (cosine schedule): (its config, its workdir)."""
  config, workdir = _digits(data_dir), str(tmp_path_factory.mktemp('source'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _copy(workdir, tmp_path) -> str:
  target = str(tmp_path / 'run')
  shutil.copytree(workdir, target)
  return target


# --- train.steps against the learning-rate schedule -----------------------------------------------


def _json(**fields) -> str:
  return overridden(base_config(), **fields).to_json_best_effort()


def test_a_schedule_shorter_than_the_run_is_one_warning_with_its_final_rate(data_dir, caplog):
  caplog.set_level('WARNING')
  train.setup(_digits(data_dir, train__steps=30, optim__schedule_steps=20))
  assert 'optim.schedule_steps=20 < train.steps=30: the cosine learning rate stays at its final value, 0, ' \
         'for the last 10 steps.' in caplog.text
  caplog.clear()
  train.setup(_digits(data_dir, train__steps=30, optim__schedule_steps=20, optim__schedule='constant'))
  assert 'schedule_steps' not in caplog.text  # a constant rate has no end to run past


def test_config_changes_compare_the_schedules_effective_length():
  def changes(saved: dict, now: dict):
    return config_changes(_json(**saved), overridden(base_config(), **now))

  for schedule in ('constant', 'rsqrt'):  # their rate at a step does not depend on the length
    assert changes({'optim__schedule': schedule, 'train__steps': 300},
                   {'optim__schedule': schedule, 'train__steps': 320}) == []
  for schedule in ('linear', 'cosine'):
    refused = changes({'optim__schedule': schedule, 'train__steps': 300},
                      {'optim__schedule': schedule, 'train__steps': 320})
    assert refused == [
        f'optim.schedule_steps: 300 in the workdir, 320 now (optim.schedule_steps=0 follows train.steps, so '
        f'the {schedule} learning rate would jump; --config.optim.schedule_steps=300 keeps the old schedule)']
    # The fix the message names: the same effective length, so accepted.
    assert changes({'optim__schedule': schedule, 'train__steps': 300},
                   {'optim__schedule': schedule, 'train__steps': 320, 'optim__schedule_steps': 300}) == []
    # An explicit length stays put when train.steps grows.
    assert changes({'optim__schedule': schedule, 'train__steps': 300, 'optim__schedule_steps': 500},
                   {'optim__schedule': schedule, 'train__steps': 400, 'optim__schedule_steps': 500}) == []
  # Changing an explicit length is a change (no hint: nothing followed train.steps).
  assert changes({'optim__schedule': 'cosine', 'optim__schedule_steps': 300},
                 {'optim__schedule': 'cosine', 'optim__schedule_steps': 400}) == [
      'optim.schedule_steps: 300 in the workdir, 400 now']
  # Another schedule is reported as such; the unchanged length is not.
  assert changes({'optim__schedule': 'constant'}, {'optim__schedule': 'cosine'}) == [
      "optim.schedule: 'constant' in the workdir, 'cosine' now"]
  # A config.json written before the field existed reads as schedule_steps=0.
  saved = _json(optim__schedule='cosine', train__steps=300).replace('"schedule_steps": 0, ', '')
  assert 'schedule_steps' not in saved
  assert config_changes(saved, overridden(base_config(), optim__schedule='cosine', train__steps=300)) == []
  assert len(config_changes(saved, overridden(base_config(), optim__schedule='cosine', train__steps=320)))


def test_extending_a_cosine_run_is_refused_unless_schedule_steps_keeps_it(source, data_dir, tmp_path):
  workdir = _copy(source[1], tmp_path)
  longer = _digits(data_dir, train__steps=30, train__log_every=1)
  with pytest.raises(ConfigError, match=r'optim\.schedule_steps: 20 in the workdir, 30 now .*cosine learning '
                     r'rate would jump; --config\.optim\.schedule_steps=20 keeps the old schedule'):
    train.train_and_evaluate(longer, workdir)
  longer.optim.schedule_steps = SOURCE_STEPS
  train.train_and_evaluate(longer, workdir)
  lrs = {r['step']: r['lr'] for r in read_metrics(workdir, 'train')}
  assert sorted(lrs) == [10, 20, *range(21, 31)]
  # The old cosine ended at step 20: past its end it stays at its final value, 0. Stretched over
  # 30 steps it would have jumped back up to 2.5e-4 at step 21.
  assert all(lrs[step] == pytest.approx(0.0, abs=1e-12) for step in range(21, 31))
  assert float(optim.learning_rate(_digits(data_dir, train__steps=30).optim, 30)(20)) == pytest.approx(2.5e-4)
  assert read_metrics(workdir, 'test')[-1]['step'] == 30


# --- the global batch over the mesh, and shard_map ---------------------------------------------------


@pytest.mark.slow  # 15 s; CI trains 2 processes x 4 devices in test_scale.py's layouts, to the same loss
def test_two_processes_train_a_global_batch_of_8_on_8_devices(data_dir, tmp_path):
  """The mesh spans both processes' 4 devices, so a batch of 8 (one row per device) is valid."""
  env = {**os.environ, 'PYTHON': sys.executable, 'LOCAL_DEVICES': '4'}
  # Its own process group, so a hung run is killed whole (the launcher's children included).
  proc = subprocess.Popen(
      ['bash', 'launch/local_multihost.sh', '2', '--config=experiments/digits_mlp.py',
       f'--workdir={tmp_path}', f'--config.data.data_dir={data_dir}', '--config.train.batch_size=8',
       '--config.mesh.data=8', '--config.train.steps=20', '--config.train.eval_every=0',
       '--config.checkpoint.every=20'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    output, _ = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, output[-3000:]
  assert [r['step'] for r in read_metrics(tmp_path, 'test')] == [20]


def test_shard_map_with_fsdp_is_a_config_error(data_dir):
  def config(mode, fsdp):
    return overridden(base_config(), data__data_dir=data_dir, parallel__mode=mode, mesh__fsdp=fsdp)

  for fsdp in (2, -1):
    with pytest.raises(ConfigError, match=rf'^config\.mesh\.fsdp={fsdp} is invalid: parallel\.mode=shard_map '
                       r'replicates the weights: use mesh\.fsdp=1 \(mesh\.data\), or parallel\.mode=auto$'):
      validate(config('shard_map', fsdp))
    validate(config('auto', fsdp))
  validate(config('shard_map', 1))


# --- dimensions the mesh cannot split -------------------------------------------------------------


def test_a_dimension_the_mesh_cannot_split_is_one_warning_naming_the_parameter(caplog):
  c = base_config()
  c.model.width = 6  # the hidden layers' 6 units on tensor=4
  model = models.build(c.model, 10)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64)), train=False))['params']
  mesh = jax.sharding.AbstractMesh((2, 1, 4), sharding.MESH_AXES)
  caplog.set_level(logging.WARNING)
  lines = sharding.warn_replicated(boxed, mesh, c.mesh.rules)
  assert lines == [
      'params/hidden_0/bias (6,): dim 0 (6) is not divisible by mesh axes tensor=4; replicated',
      'params/hidden_0/kernel (64, 6): dim 1 (6) is not divisible by mesh axes tensor=4; replicated',
      'params/hidden_1/kernel (6, 6): dim 0 (6) is not divisible by mesh axes tensor=4; replicated']
  assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == lines
  # Several axes on one dimension are named together.
  two_axes = sharding.warn_replicated(boxed, jax.sharding.AbstractMesh((1, 4, 2), sharding.MESH_AXES),
                                      (('embed', ('fsdp', 'tensor')), ('mlp', None)))
  assert two_axes == [f'params/{name}: dim {dim} (6) is not divisible by mesh axes fsdp=4 x tensor=2; '
                      'replicated' for name, dim in [('head/kernel (6, 10)', 0), ('hidden_1/bias (6,)', 0),
                                        ('hidden_1/kernel (6, 6)', 1)]]


SETUP_WARNINGS = '''
import sys
from bigjax import train
from bigjax.config import base_config
c = base_config()
c.data.data_dir, c.model.width, c.mesh.data, c.mesh.tensor = sys.argv[1], 6, 2, 4
train.setup(c)
'''


def test_setup_warns_once_per_parameter_not_per_optimizer_state_copy(data_dir):
  result = subprocess.run([sys.executable, '-c', SETUP_WARNINGS, data_dir], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                                          'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert result.returncode == 0, result.stderr[-3000:]
  warned = [line[line.index('params/'):] for line in result.stderr.splitlines() if 'replicated' in line]
  # Adam keeps two moments of each: still one line per parameter.
  assert warned == [
      'params/hidden_0/bias (6,): dim 0 (6) is not divisible by mesh axes tensor=4; replicated',
      'params/hidden_0/kernel (64, 6): dim 1 (6) is not divisible by mesh axes tensor=4; replicated',
      'params/hidden_1/kernel (6, 6): dim 0 (6) is not divisible by mesh axes tensor=4; replicated']


# --- one default per model field ------------------------------------------------------------------


def test_a_transformer_lm_that_leaves_fields_to_the_class_defaults():
  defaults = models.defaults('transformer_lm')
  left_out = ml_collections.ConfigDict({'name': 'transformer_lm'})
  spelled_out = ml_collections.ConfigDict(
      {'name': 'transformer_lm', 'num_layers': defaults['num_layers'], 'd_model': defaults['d_model']})
  flops = models.flops_per_example(left_out, 1000, (64,))
  assert flops == models.flops_per_example(spelled_out, 1000, (64,)) == \
      (6 * 1000 + 12 * defaults['num_layers'] * defaults['d_model'] * 64) * 64
  # check_config reads the class's d_model (128), not a default of its own.
  models.check_config(ml_collections.ConfigDict({'name': 'transformer_lm', 'num_heads': 8}))
  with pytest.raises(ConfigError, match=r"config\.model\.d_model=128 is invalid: use a multiple of "
                     r"model\.num_heads=3"):
    models.check_config(ml_collections.ConfigDict({'name': 'transformer_lm', 'num_heads': 3}))


# --- train.on_nonfinite ---------------------------------------------------------------------------


def test_a_skipped_step_keeps_params_optimizer_state_and_batch_statistics_bitwise(data_dir):
  c = base_config()
  c.data.data_dir = data_dir
  c.model.name, c.model.stage_sizes, c.model.width = 'resnet', (1,), 8
  c.train.batch_size, c.train.on_nonfinite, c.debug.nan_at_step = 16, 'skip', 2
  s = train.setup(c)
  with sharding.active(s.mesh, s.rules):
    step = train.make_train_step(s, c)
    batches = pipeline.train_iterator(s.dataset.splits['train'], s.dataset.preprocess, 16, c.seed)
    state = s.init()
    states, losses = [jax.device_get(state)], []
    for _ in range(2):  # step 1 trains, step 2 is poisoned
      state, metrics = step(state, sharding.shard_batch(next(batches), s.mesh))
      states.append(jax.device_get(state))
      losses.append(float(metrics['loss']))
  init, before, after = states
  assert np.isfinite(losses[0]) and np.isnan(losses[1])
  assert (int(before.step), int(after.step), int(after.nonfinite_steps)) == (1, 2, 1)
  assert jax.tree.leaves(after.model_state['batch_stats'])
  for field in ('params', 'opt_state', 'model_state'):
    leaves = [jax.tree.leaves(getattr(state, field)) for state in (init, before, after)]
    # Step 1 moved each of them, so the equality after step 2 means something.
    assert any(not np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True)), field
    for a, b in zip(leaves[1], leaves[2], strict=True):
      np.testing.assert_array_equal(a, b, err_msg=field)


def test_a_nonfinite_loss_stops_the_command_with_exit_3_and_one_line(data_dir, tmp_path):
  result = run_main('--config=experiments/digits_mlp.py', f'--workdir={tmp_path}',
                    f'--config.data.data_dir={data_dir}', '--config.debug.nan_at_step=5',
                    '--config.train.steps=10')
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      'bigjax: stopped: the loss or gradient at step 5 is not finite (train.on_nonfinite=stop); no '
      'checkpoint was written. Lower optim.lr, add optim.clip_norm, or use --config.train.on_nonfinite=skip')
  assert 'Traceback' not in result.stderr


def test_the_logged_lr_is_the_one_the_optimizer_used_after_a_skipped_step(data_dir, tmp_path):
  config = _digits(data_dir, optim__schedule='linear', train__steps=8, train__log_every=1,
                   train__eval_every=0, checkpoint__every=8, debug__nan_at_step=3, train__on_nonfinite='skip')
  train.train_and_evaluate(config, str(tmp_path))
  lrs = {r['step']: r['lr'] for r in read_metrics(tmp_path, 'train')}
  schedule = optim.learning_rate(config.optim, config.train.steps)
  counts = {1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6}  # step 3's update was not applied
  assert sorted(lrs) == sorted(counts)
  for step, count in counts.items():
    assert lrs[step] == pytest.approx(float(schedule(count)), rel=1e-6), step
  for step in range(4, 9):  # one step behind the train step's count
    assert lrs[step] != pytest.approx(float(schedule(step - 1)), rel=1e-3), step
  assert int(optim.schedule_count(final_state(config, str(tmp_path)).opt_state)) == 7


# --- checkpoint.init_from and checkpoint.allow_config_change --------------------------------------


def test_init_from_in_a_run_takes_the_params_that_fit_and_a_fresh_optimizer(source, data_dir, tmp_path,
                                                                           monkeypatch, caplog):
  config = _digits(data_dir, model__width=128, checkpoint__init_from=source[1], train__steps=2,
                   train__eval_every=0)
  started = []
  loop = train._train_loop

  def record_start(s, config, state, step, **kwargs):
    started.append((jax.device_get(state), step))
    return loop(s, config, state, step, **kwargs)
  monkeypatch.setattr(train, '_train_loop', record_start)
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(config, str(tmp_path))

  [(start, step)] = started
  assert step == 0 and int(start.step) == 0
  src = final_state(source[0], source[1]).params
  fresh = jax.device_get(train.setup(_digits(data_dir, model__width=128)).init().params)
  assert not np.array_equal(src['head']['bias'], fresh['head']['bias'])  # 20 steps moved it
  np.testing.assert_array_equal(start.params['head']['bias'], src['head']['bias'])  # the one that fits
  for path, leaf in jax.tree_util.tree_leaves_with_path(start.params):
    if jax.tree_util.keystr(path) != "['head']['bias']":
      np.testing.assert_array_equal(leaf, _at(fresh, path))  # the rest: this config's own init
  assert all(np.all(x == 0) for x in jax.tree.leaves(start.opt_state))  # Adam's count and moments: fresh
  assert 'Initialized 1 of 6 params from' in caplog.text
  assert 'skipped hidden_0/kernel: (64, 256) there, (64, 128) here' in caplog.text


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_allow_config_change_resumes_with_the_changed_field(source, data_dir, tmp_path, caplog):
  workdir = _copy(source[1], tmp_path)
  changed = _digits(data_dir, optim__lr=0.01, optim__schedule='constant', train__steps=30, train__log_every=5,
                    checkpoint__allow_config_change=True)
  caplog.set_level(logging.INFO)
  train.train_and_evaluate(changed, workdir)
  assert f'Resumed from step {SOURCE_STEPS} in {workdir}' in caplog.text
  train_lines = read_metrics(workdir, 'train')
  assert [r['step'] for r in train_lines] == [10, 20, 25, 30]
  assert [r['lr'] for r in train_lines[2:]] == pytest.approx([0.01, 0.01])  # the new rate applies
  assert train_lines[1]['lr'] < 1e-3  # the source's cosine, before the change
  assert read_metrics(workdir, 'test')[-1]['step'] == 30
  assert '30' in os.listdir(os.path.join(workdir, 'checkpoints'))
