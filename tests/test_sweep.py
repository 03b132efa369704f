"""Ablation sweeps: the sweep file format, run naming, skip and resume, failures, reports.

Most tests run the real `python -m bigjax.sweep` over tests/fake_main.py (the trainer's files
in milliseconds, no JAX); one runs it over the real trainer on digits.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bigjax import sweep, sweep_report
from helpers import REPO

FAKE_MAIN = f'--main={sys.executable} tests/fake_main.py'


def _sweep_file(tmp_path, body: str) -> str:
  path = tmp_path / 'ablation.py'
  header = 'from bigjax.sweep import product, sweep, zipped\n\n\ndef get_sweep():\n  return '
  path.write_text(header + body + '\n')
  return str(path)


def _sweep_command(sweep_file, workdir, *args):
  return [sys.executable, '-m', 'bigjax.sweep', '--config=experiments/digits_mlp.py', f'--sweep={sweep_file}',
          f'--workdir={workdir}', FAKE_MAIN, *args]


def _run_sweep(*command_args, timeout=120):
  return subprocess.run(_sweep_command(*command_args), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def _read_csv(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def _starts(run_dir):
  """(pid, step it started from) of each start of a fake run."""
  path = os.path.join(run_dir, 'starts.txt')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [tuple(map(int, line.split())) for line in f]


def _alive(pid) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f'/proc/{pid}/stat') as f:  # a zombie is dead, waiting for its parent to reap it
    return f.read().split(')')[-1].split()[0] != 'Z'


def test_sweep_file_helpers_build_variants():
  assert sweep.sweep('model.depth', [1, 2]) == [{'model.depth': 1}, {'model.depth': 2}]
  assert sweep.product(sweep.sweep('a', [1, 2]), sweep.sweep('b', ['x', 'y'])) == [
      {'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
  assert sweep.zipped(sweep.sweep('optim.name', ['sgd', 'adam']), sweep.sweep('optim.lr', [0.1, 1e-3])) == [
      {'optim.name': 'sgd', 'optim.lr': 0.1}, {'optim.name': 'adam', 'optim.lr': 1e-3}]
  with pytest.raises(sweep.SweepError, match='one length'):
    sweep.zipped(sweep.sweep('a', [1, 2]), sweep.sweep('b', [1]))


@pytest.mark.parametrize('body, message', [
    ("[]", 'non-empty list'),
    ("{'model.depth': 2}", 'non-empty list'),
    ("['model.depth=2']", 'must be a dict'),
    ("[{'model depth': 2}]", 'not a config path'),
    ("[{'seed': 1}]", 'use --seeds'),
    ("[{'model.depth': [1, 2]}]", 'values must be'),
    ("1 / 0", 'ZeroDivisionError'),
    ("zipped(sweep('a', [1, 2]), sweep('b', [1]))", 'one length'),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, body, message):
  with pytest.raises(sweep.SweepError, match=message):
    sweep.load_sweep(_sweep_file(tmp_path, body))


def test_bad_sweep_input_exits_2_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'sweep'
  result = _run_sweep(_sweep_file(tmp_path, "[{'seed': 1}]"), workdir)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'bigjax: error: {tmp_path}/ablation.py: variants cannot set seed: use --seeds=N (seeds 0..N-1)']
  assert not workdir.exists()


def test_variant_names_are_readable_and_unique():
  names = sweep.variant_names([{'model.activation': 'gelu'}, {'model.depth': 2, 'model.width': 64}, {}])
  assert names == ['activation=gelu', 'depth=2,width=64', 'base']
  # Keys that end alike keep their full path; a config file is named by its file and variant.
  assert sweep.variant_names([{'model.dropout': 0.1, 'data.dropout': 0.0}]) == [
      'model.dropout=0.1,data.dropout=0.0']
  assert sweep.variant_names([{'config': 'experiments/imdb_lstm.py:offline'}, {'optim.name': 'a/b c'}]) == [
      'config=imdb_lstm-offline', 'name=a-b-c']
  assert sweep.variant_names([{'name': 'gd', 'train.batch_size': -1}, {'train.batch_size': 8}]) == [
      'gd', 'batch_size=8']
  with pytest.raises(sweep.SweepError, match='both named'):
    sweep.variant_names([{'a': 1}, {'a': 1}])
  runs = sweep.plan([{'model.activation': 'tanh', 'name': 'tanh'}], ['activation=tanh'], main=['M'],
                    config='c.py', base_overrides=['--config.train.steps=5'], seeds=2, workdir='w')
  assert [r.workdir for r in runs] == ['w/activation=tanh/seed0', 'w/activation=tanh/seed1']
  assert runs[1].command == ['M', '--config=c.py', '--config.train.steps=5', '--config.model.activation=tanh',
                             '--config.seed=1', '--workdir=w/activation=tanh/seed1']


def test_print_lists_the_commands_and_runs_nothing(tmp_path):
  workdir = tmp_path / 'sweep'
  result = _run_sweep(_sweep_file(tmp_path, "sweep('model.activation', ['relu', 'gelu'])"), workdir,
                      '--seeds=2', '--print')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 4 and all('fake_main.py --config=experiments/digits_mlp.py' in line for line in lines)
  assert lines[3].endswith(
      f'--config.model.activation=gelu --config.seed=1 --workdir={workdir}/activation=gelu/seed1')
  assert sorted(os.listdir(workdir)) == ['sweep.json']  # the plan, for a later --report; no run


def test_sweep_reports_failures_and_skips_finished_runs(tmp_path):
  workdir = tmp_path / 'sweep'
  sweep_file = _sweep_file(tmp_path, "sweep('model.activation', ['relu', 'swish', 'tanh'])")
  result = _run_sweep(sweep_file, workdir, '--seeds=2', '--parallel=2')
  assert result.returncode == 0, result.stderr
  rows = {row['variant']: row for row in _read_csv(workdir)}
  assert list(rows) == ['activation=relu', 'activation=swish', 'activation=tanh']
  # fake accuracy: 0.875 (relu) and 0.75 (tanh), + seed / 64 for seeds 0 and 1.
  assert float(rows['activation=relu']['test/accuracy_mean']) == 0.875 + 1 / 128
  assert float(rows['activation=tanh']['test/accuracy_mean']) == 0.75 + 1 / 128
  assert float(rows['activation=tanh']['test/accuracy_std']) == pytest.approx((1 / 64) / 2 ** 0.5, abs=1e-15)
  assert rows['activation=relu']['status'] == 'done' and rows['activation=relu']['seeds'] == '2'
  assert rows['activation=swish']['status'].startswith(
      "failed 2/2: bigjax: error: config.model.activation='swish' is invalid")
  assert rows['activation=swish']['seeds'] == '0'
  markdown = (workdir / 'results.md').read_text()
  assert '| activation=tanh | done | 2 | 6 |' in markdown
  assert '**0.8828 ± 0.0110**' in markdown  # relu: the best test accuracy
  assert '### activation=swish seed 1 failed' in markdown
  assert (workdir / 'curves.png').stat().st_size > 10_000 and (workdir / 'bar.png').stat().st_size > 10_000

  first = _read_csv(workdir)
  again = _run_sweep(sweep_file, workdir, '--seeds=2')
  assert again.returncode == 0, again.stderr
  assert '4 already done, 2 to run' in again.stdout  # only the failed variant is retried
  for variant in ('activation=relu', 'activation=tanh'):
    assert len(_starts(workdir / variant / 'seed0')) == len(_starts(workdir / variant / 'seed1')) == 1
  assert _read_csv(workdir) == first


def _wait_for(condition, timeout=60):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.02)


def test_interrupted_sweep_resumes_to_the_report_of_an_uninterrupted_one(tmp_path):
  sweep_file = _sweep_file(tmp_path, "sweep('model.activation', ['relu', 'gelu'])")
  args = ('--seeds=2', '--config.train.steps=12', '--config.fake.step_s=0.1')
  whole = tmp_path / 'whole'
  assert _run_sweep(sweep_file, whole, *args).returncode == 0

  cut = tmp_path / 'cut'
  first_run, second_run = cut / 'activation=relu' / 'seed0', cut / 'activation=relu' / 'seed1'
  proc = subprocess.Popen(_sweep_command(sweep_file, cut, *args), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: sweep_report.is_done(first_run) and os.path.exists(second_run / 'ckpt.json'))
  proc.send_signal(signal.SIGINT)  # Ctrl-C
  output = proc.communicate(timeout=60)[0]
  assert proc.returncode == 130, output
  assert 'stopping 1 run(s)' in output
  assert not any(_alive(pid) for pid, _ in _starts(second_run))  # no orphan
  assert json.loads((second_run / 'sweep_status.json').read_text())['status'] == 'interrupted'

  # SIGKILL the sweep itself: its run gets SIGTERM from the kernel (PR_SET_PDEATHSIG).
  third_run = cut / 'activation=gelu' / 'seed0'
  proc = subprocess.Popen(_sweep_command(sweep_file, cut, *args), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  _wait_for(lambda: os.path.exists(third_run / 'ckpt.json'))
  proc.kill()
  proc.wait()
  _wait_for(lambda: not any(_alive(pid) for pid, _ in _starts(third_run)), timeout=10)

  result = _run_sweep(sweep_file, cut, *args)
  assert result.returncode == 0, result.stderr
  assert '2 already done, 2 to run' in result.stdout  # the second sweep finished second_run
  assert len(_starts(first_run)) == 1  # finished: never started again
  for run in (second_run, third_run):  # interrupted: resumed from its checkpoint, not from step 0
    starts = _starts(run)
    assert len(starts) == 2 and starts[0][1] == 0 and starts[1][1] > 0
  drop_wall = lambda rows: [{k: v for k, v in row.items() if k != 'wall_s'} for row in rows]
  assert drop_wall(_read_csv(cut)) == drop_wall(_read_csv(whole))


def test_report_from_fixture_runs(tmp_path):
  """Hand-written run folders: the table's numbers, and a run started by hand (no status file)."""
  variants = [{'name': 'width=64', 'overrides': {'model.width': 64}},
              {'name': 'width=256', 'overrides': {'model.width': 256}}]
  (tmp_path / 'sweep.json').write_text(json.dumps(
      {'config': 'experiments/digits_mlp.py', 'overrides': [], 'sweep': 'widths.py', 'seeds': 3,
       'variants': variants}))
  accuracies = {'width=64': [0.90, 0.92, 0.94], 'width=256': [0.96, 0.97]}  # width=256's seed2 never ran
  for name, values in accuracies.items():
    for seed, accuracy in enumerate(values):
      run = tmp_path / name / f'seed{seed}'
      run.mkdir(parents=True)
      records = [{'step': 10, 'split': 'train', 'loss': 0.5 + seed, 'time': 1.0},
                 {'step': 20, 'split': 'train', 'loss': 0.25 + seed, 'time': 2.0},
                 {'step': 20, 'split': 'eval', 'accuracy': accuracy - 0.01, 'time': 2.5},
                 {'step': 20, 'split': 'test', 'accuracy': accuracy, 'time': 3.0 + seed}]
      (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  (tmp_path / 'width=256' / 'seed0' / 'sweep_status.json').write_text(json.dumps({'wall_s': 10.0}))

  result = subprocess.run([sys.executable, '-m', 'bigjax.sweep', f'--report={tmp_path}'], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  rows = _read_csv(tmp_path)
  assert [(r['variant'], r['status'], r['seeds'], r['steps'], r['wall_s']) for r in rows] == [
      ('width=64', 'done', '3', '20', '4.0'), ('width=256', '2/3 done', '2', '20', '7.0')]
  assert float(rows[0]['test/accuracy_mean']) == pytest.approx(0.92, abs=1e-12)
  assert float(rows[0]['test/accuracy_std']) == pytest.approx(0.02, abs=1e-12)
  assert float(rows[1]['eval/accuracy_mean']) == pytest.approx(0.955, abs=1e-12)
  assert float(rows[1]['test/accuracy_std']) == pytest.approx(0.0070710678118654, abs=1e-12)
  markdown = (tmp_path / 'results.md').read_text()
  assert '| width=64 | done | 3 | 20 | 4.0 | 0.9100 ± 0.0200 | 0.9200 ± 0.0200 |' in markdown
  assert '| width=256 | 2/3 done | 2 | 20 | 7.0 | 0.9550 ± 0.0071 | **0.9650 ± 0.0071** |' in markdown
  assert result.stdout == markdown


@pytest.mark.slow  # CI's budget: the sweep's own logic is tested above with a fake trainer
def test_sweep_over_the_real_trainer(tmp_path, data_dir):
  """bigjax.main itself: a variant trains and is scored, a bad one is a recorded failure."""
  sweep_file = _sweep_file(tmp_path, "sweep('model.activation', ['tanh', 'swish'])")
  result = subprocess.run(
      [sys.executable, '-m', 'bigjax.sweep', '--config=experiments/digits_mlp.py', f'--sweep={sweep_file}',
       f'--workdir={tmp_path / "sweep"}', '--config.train.steps=150', f'--config.data.data_dir={data_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  tanh, swish = _read_csv(tmp_path / 'sweep')
  assert tanh['status'] == 'done' and tanh['steps'] == '150'
  assert float(tanh['test/accuracy_mean']) >= 0.9
  assert swish['status'] == ("failed 1/1: bigjax: error: config.model.activation='swish' is invalid: "
                             "choose one of gelu, relu, sigmoid, silu, tanh")


def test_a_failed_run_is_summed_up_by_its_error_line():
  log = 'I1129 train.py] step 100/300\nbigjax: stopped: the loss or gradient at step 150 is not finite\n'
  assert sweep._error_line(log) == 'bigjax: stopped: the loss or gradient at step 150 is not finite'
  assert sweep._error_line('Traceback (most recent call last):\n  File "x"\nValueError: bad shape\n') == (
      'ValueError: bad shape')
  assert sweep._error_line('killed\n\n') == 'killed' and sweep._error_line('') == 'no output'
