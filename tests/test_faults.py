"""Fault injection: SIGTERM, corrupted checkpoints, NaN/Inf, mismatched resumes, init_from.

Each test breaks a digits run on purpose and checks what bigjax does: the exit status, the one
line it prints, and that the resumed run ends exactly where an unbroken one does. (SIGKILL at
any moment: tests/test_main_job.py; a dead process of a multi-process run: tests/test_scale.py.)
"""

import errno
import os
import shutil
import signal
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigjax import checkpoint, files, train
from bigjax.config import ConfigError, RunStopped
from helpers import (
  REPO,
  assert_resumed,
  corrupt_checkpoint,
  load_script,
  overridden,
  read_metrics,
  run_main,
  signal_when,
  start_main,
  tree_listing,
)

STEPS = 300
ARGS = ['--config=experiments/digits_mlp.py', f'--config.train.steps={STEPS}',
        '--config.checkpoint.every=100', '--config.train.eval_every=100']


def _config(data_dir, **fields):
  """digits_mlp's config as ARGS set it, built in process, then `section__key` fields."""
  c = load_script(os.path.join(REPO, 'experiments', 'digits_mlp.py')).get_config()
  c.data.data_dir = data_dir
  c.train.steps, c.checkpoint.every, c.train.eval_every = STEPS, 100, 100
  return overridden(c, **fields)


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory):
  """The unbroken run: its workdir (checkpoints 100, 200, 300) and final test record."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  result = run_main(*ARGS, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, read_metrics(workdir, 'test')[-1]


def _copy(workdir, tmp_path) -> str:
  target = str(tmp_path / 'run')
  shutil.copytree(workdir, target)
  return target


def _same_test(workdir, reference_test):
  test = read_metrics(workdir, 'test')[-1]
  untimed = lambda record: {k: v for k, v in record.items() if k != 'time'}
  assert untimed(test) == untimed(reference_test)


def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes_exactly(reference, data_dir, tmp_path):
  workdir, log = tmp_path / 'preempted', tmp_path / 'log.txt'
  with open(log, 'w') as out:  # a file, not a pipe: nothing blocks however much it logs
    proc = start_main(*ARGS, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', stdout=out,
                      stderr=subprocess.STDOUT)
    assert signal_when(proc, (workdir / 'checkpoints' / '100').exists, signal.SIGTERM), 'it ended first'
  output = log.read_text()
  assert proc.returncode == 143, output[-3000:]
  line = [x for x in output.splitlines() if x.startswith('bigjax: stopped: preempted (SIGTERM) at step ')]
  assert len(line) == 1, output[-3000:]
  step = int(line[0].split('at step ')[1].split(':')[0])
  assert 100 < step < STEPS and str(step) in os.listdir(workdir / 'checkpoints')  # this step, complete
  assert read_metrics(workdir, 'test') == []
  result = run_main(*ARGS, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert_resumed(result.stderr, workdir, step)
  _same_test(workdir, reference[1])


@pytest.mark.parametrize('how', ['truncate', 'delete'])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_one_before_resumed(reference, data_dir, tmp_path,
                                                                            how, caplog):
  caplog.set_level('INFO')  # the resume line is INFO
  workdir = _copy(reference[0], tmp_path)
  corrupt_checkpoint(os.path.join(workdir, 'checkpoints', '300'), how)
  train.train_and_evaluate(_config(data_dir), workdir)
  assert any('Checkpoint' in r.message and 'is corrupt' in r.message for r in caplog.records)
  assert f'Resumed from step 200 in {workdir}' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['100', '200', '300', '300.corrupt']
  _same_test(workdir, reference[1])  # resumed from 200, redid 200 -> 300 exactly


@pytest.mark.parametrize('mode', ['on_corrupt=fail', 'eval'])
def test_a_corrupt_checkpoint_stops_a_read_only_mode_with_one_line_and_changes_nothing(reference, data_dir,
                                                                                      tmp_path, mode):
  """on_corrupt=fail, and every mode that only reads (eval, sample, predict: the run that owns
  the checkpoint may still be training), never rename or delete a checkpoint."""
  workdir = _copy(reference[0], tmp_path)
  corrupt_checkpoint(os.path.join(workdir, 'checkpoints', '300'), 'truncate')
  before = tree_listing(workdir)
  flag = {'on_corrupt=fail': '--config.checkpoint.on_corrupt=fail', 'eval': '--mode=eval'}[mode]
  result = run_main(*ARGS, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', flag)
  assert result.returncode == checkpoint.EXIT_CORRUPT, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'bigjax: stopped: checkpoint {workdir}/checkpoints/300 is corrupt (')
  assert '/checkpoints/300/state/d/' in last and 'it was left as it is' in last  # names the file
  assert 'Traceback' not in result.stderr
  assert tree_listing(workdir) == before


def test_a_read_error_that_is_not_corruption_stops_naming_the_file_and_touches_nothing(
    reference, data_dir, tmp_path, monkeypatch):
  """An I/O error (a flaky network disk, a lost mount) says nothing about the checkpoint: no
  fallback to an older step, nothing renamed, one line naming the file."""
  workdir = _copy(reference[0], tmp_path)
  before = tree_listing(workdir)
  bad_file = os.path.join(workdir, 'checkpoints', '300', 'state', 'manifest.ocdbt')

  def read_fails(self, directory, *args, **kwargs):
    raise OSError(errno.EIO, 'Input/output error', bad_file)
  monkeypatch.setattr(ocp.StandardCheckpointHandler, 'restore', read_fails)
  for fallback in ('fallback', 'fail'):
    with pytest.raises(RunStopped) as stop:
      train.train_and_evaluate(_config(data_dir, checkpoint__on_corrupt=fallback), workdir)
    assert stop.value.status == checkpoint.EXIT_UNREADABLE
    message = str(stop.value)
    assert '\n' not in message and message.startswith(
        f'checkpoint {workdir}/checkpoints/300 could not be read (OSError: [Errno 5] Input/output error: ')
    assert bad_file in message
  assert tree_listing(workdir) == before


def test_nonfinite_stop_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  config = _config(data_dir, debug__nan_at_step=150)
  with pytest.raises(RunStopped, match='step 150 is not finite .* the newest checkpoint, step 100,') as stop:
    train.train_and_evaluate(config, str(tmp_path))
  assert stop.value.status == train.EXIT_NONFINITE
  assert os.listdir(tmp_path / 'checkpoints') == ['100']  # nothing saved after the NaN


def test_nonfinite_skip_leaves_out_that_update_and_counts_it(data_dir, tmp_path):
  config = _config(data_dir, debug__nan_at_step=150, train__on_nonfinite='skip')
  test = train.train_and_evaluate(config, str(tmp_path))
  counts = {r['step']: r['nonfinite_steps'] for r in read_metrics(tmp_path, 'train')}
  assert counts == {100: 0, 200: 1, 300: 1}
  # The skipped step is counted, and left out of its interval's means: those of the other 99 steps.
  assert all(np.isfinite(r['loss']) and r['loss'] < 0.5 for r in read_metrics(tmp_path, 'train'))
  assert test['accuracy'] >= 0.95  # the params never saw the NaN


def test_a_changed_width_is_one_line_naming_the_parameter(reference, data_dir, tmp_path):
  workdir = _copy(reference[0], tmp_path)
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = f.read()
  args = [*ARGS, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', '--config.model.width=128']
  result = run_main(*args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'bigjax: error: {workdir} holds a run with another config: model.width: 256 in the workdir, 128 now '
      '(params/head/kernel has shape (256, 10) in the checkpoint and (128, 10) in this config at step 300). '
      'Use another --workdir, or resume anyway with --config.checkpoint.allow_config_change=True']
  result = run_main(*args, '--config.checkpoint.allow_config_change=True')
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
      f'bigjax: error: checkpoint 300 in {workdir}/checkpoints does not fit this config: params/head/kernel '
      'has shape (256, 10) in the checkpoint and (128, 10) in this config. Use another --workdir, or the '
      'config the run was started with')
  with open(os.path.join(workdir, 'config.json')) as f:
    assert f.read() == saved  # nothing written


def test_config_changes_outside_the_safe_fields_are_refused(reference, data_dir, tmp_path):
  workdir = _copy(reference[0], tmp_path)
  with pytest.raises(ConfigError, match=r"optim.lr: 0.001 in the workdir, 0.01 now\. Use another"):
    train.train_and_evaluate(_config(data_dir, optim__lr=0.01), workdir)
  longer = train.train_and_evaluate(  # cosine: its length stays the 300 steps it was saved with
      _config(data_dir, train__steps=320, train__log_every=40, optim__schedule_steps=300), workdir)
  assert longer['accuracy'] >= 0.95 and read_metrics(workdir, 'test')[-1]['step'] == 320


def test_init_from_takes_the_params_that_fit(reference, data_dir):
  config = _config(data_dir, model__depth=3)  # hidden_2 is new
  s = train.setup(config)
  fresh = s.init().params
  params = checkpoint.init_from(reference[0], fresh)
  source, _, skipped = checkpoint.load_params(reference[0], fresh)
  assert sorted(source) == ['head/bias', 'head/kernel', 'hidden_0/bias', 'hidden_0/kernel', 'hidden_1/bias',
                            'hidden_1/kernel']
  assert skipped == ['hidden_2/bias: not there', 'hidden_2/kernel: not there']
  np.testing.assert_array_equal(params['hidden_1']['kernel'], source['hidden_1/kernel'])
  np.testing.assert_array_equal(params['hidden_2']['kernel'], fresh['hidden_2']['kernel'])
  with pytest.raises(ConfigError, match='no checkpoints in'):
    checkpoint.init_from(str(reference[0]) + '-missing', fresh)


def test_a_write_that_fails_halfway_leaves_the_old_file(tmp_path):
  path = str(tmp_path / 'record.json')
  with files.replaced_atomically(path) as f:
    f.write('old')
  with pytest.raises(KeyboardInterrupt), files.replaced_atomically(path) as f:
    f.write('half of the n')
    raise KeyboardInterrupt  # as a kill between two writes would
  assert open(path).read() == 'old' and os.listdir(tmp_path) == ['record.json']


def test_two_writers_of_one_file_never_mix(tmp_path):
  """Hosts sharing a disk may write the same cache file at once: each writes its own temporary
  file, and the path ends as one writer's whole content."""
  path = str(tmp_path / 'cache.json')
  with files.replaced_atomically(path) as first, files.replaced_atomically(path) as second:
    first.write('from host 0 ' * 1000)
    second.write('from host 1')
  assert open(path).read() == 'from host 0 ' * 1000 and os.listdir(tmp_path) == ['cache.json']
