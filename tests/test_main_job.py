"""The README's commands, end to end: accuracy, SIGKILL at any moment, no TensorFlow."""

import os
import random
import subprocess
import sys
import time

import pytest

from helpers import RATES, REPO, assert_resumed, read_metrics, run_main, signal_when, start_main

MAIN = ['--config=experiments/digits_mlp.py']


def test_main_job_reaches_test_accuracy(main_job):
  test = read_metrics(main_job, 'test')
  assert len(test) == 1 and test[0]['step'] == 1500
  assert test[0]['accuracy'] >= 0.96


@pytest.mark.slow  # 45 s on 2 cores; CI keeps the main job's figure (pytest -m slow runs it)
def test_digits_cnn_reaches_test_accuracy(data_dir, tmp_path):
  result = run_main('--config=experiments/digits_cnn.py', f'--workdir={tmp_path}',
                    f'--config.data.data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_metrics(str(tmp_path), 'test')[0]['accuracy'] >= 0.97


def _start(workdir, data_dir):
  return start_main(*MAIN, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')


def test_sigkill_at_any_moment_then_rerun_matches_uninterrupted(main_job, data_dir, tmp_path):
  """Kill 1 lands mid-save of checkpoint 1000; kill 2 at a random moment; the third run finishes."""
  workdir = str(tmp_path / 'killed')
  ckpts = os.path.join(workdir, 'checkpoints')
  listing = lambda: os.listdir(ckpts) if os.path.isdir(ckpts) else []  # noqa: E731

  proc = _start(workdir, data_dir)
  assert signal_when(proc, lambda: any(n.startswith('1000.') for n in listing())), 'run ended before the save'
  assert '1000' not in listing() and '500' in listing()  # the half-written save is not a checkpoint

  proc = _start(workdir, data_dir)
  delay = random.Random().uniform(3.0, 10.0)  # the whole run takes about 14 s here
  start = time.time()
  signal_when(proc, lambda: time.time() - start > delay)

  newest = max(int(n) for n in listing() if n.isdigit())  # 500 at least: kill 1 came after it
  rerun = run_main(*MAIN, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert_resumed(rerun.stderr, workdir, newest)
  untimed = lambda w: [{k: v for k, v in r.items() if k not in RATES} for r in read_metrics(w)]  # noqa: E731
  killed, clean = untimed(workdir), untimed(main_job)
  assert killed[-1] == clean[-1] and killed[-1]['split'] == 'test'  # to the last digit
  assert killed == clean  # and every line before it, with no line repeated


@pytest.mark.slow  # about 3 minutes: ten kills, each followed by a restart
def test_ten_random_sigkills_then_rerun_match_uninterrupted(main_job, data_dir, tmp_path):
  workdir = str(tmp_path / 'killed')
  rng = random.Random()
  for _ in range(10):
    proc = _start(workdir, data_dir)
    start, delay = time.time(), rng.uniform(2.0, 16.0)  # startup to the end of the run: about 3-15 s
    signal_when(proc, lambda: time.time() - start > delay)  # noqa: B023 (used before the next loop)
    if proc.poll() is None:
      proc.wait()
  ckpts = os.path.join(workdir, 'checkpoints')
  newest = max((int(n) for n in os.listdir(ckpts) if n.isdigit()), default=0) if os.path.isdir(ckpts) else 0
  rerun = run_main(*MAIN, f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  if newest:
    assert_resumed(rerun.stderr, workdir, newest)
  untimed = lambda w: [{k: v for k, v in r.items() if k not in RATES} for r in read_metrics(w)]  # noqa: E731
  assert untimed(workdir) == untimed(main_job)


def test_bigjax_never_imports_tensorflow(data_dir):
  code = ('import sys; from bigjax import train; from bigjax.config import base_config; '
          'from bigjax import data; c = base_config(); c.data.data_dir = sys.argv[1]; '
          'data.load(c.data); assert "tensorflow" not in sys.modules, "tensorflow imported"')
  result = subprocess.run([sys.executable, '-c', code, data_dir], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
