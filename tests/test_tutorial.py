"""docs/tutorial.md's commands, run as written, shortened, and checked to train.

The commands come from the page itself: every ```bash block whose lines call `python -m bigjax.`
is one test, its commands run in order (a block's later commands read the workdir its first one
wrote). Each command gets the session's data dir, its `runs/` workdir moved under tmp_path, and
SHORTER's overrides for its config (fewer steps; smaller sizes where the real command takes
minutes), so the page and the test cannot drift apart.
"""

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, read_metrics

TUTORIAL = os.path.join(REPO, 'docs', 'tutorial.md')

# Per config: the flags that shorten it (appended, so they win over the page's own).
SHORTER = {
    'experiments/digits_mlp.py': ['--config.train.steps=200', '--config.train.log_every=50'],
    'experiments/digits_cnn.py': ['--config.train.steps=200', '--config.train.log_every=50'],
    'experiments/imdb_lstm.py:offline': [
        '--config.train.steps=40', '--config.train.log_every=10', '--config.train.eval_every=40',
        '--config.checkpoint.every=40', '--config.data.seq_len=64', '--config.model.embed_dim=64',
        '--config.model.hidden=64'],
    'experiments/lm_gpt.py:tiny': [
        '--config.train.steps=40', '--config.train.log_every=10', '--config.optim.warmup_steps=5',
        '--config.data.seq_len=64', '--config.model.num_layers=2'],
    'experiments/lm_gpt.py:124m': [],  # --dry_run: compiles only
}
# Blocks whose shortened commands still take more than ~20 s on 2 CPU cores, by name: the first
# command's workdir under runs/tutorial/, or dry_run_<config variant> for a block without one.
SLOW = ('optimizers', 'lstm', 'lm', 'dry_run_124m', 'splits', 'gd', 'cnn')  # CI keeps mlp and mesh
CHANCE = 0.1  # every classification dataset here has 10 classes


def _blocks():
  """[(name, [command, ...])] of the tutorial's bash blocks that run bigjax."""
  with open(TUTORIAL) as f:
    text = f.read()
  blocks = []
  for body in re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M):
    commands = [line.strip() for line in body.replace('\\\n', ' ').splitlines()
                if re.match(r'^\s*(\S+=\S+\s+)*python -m bigjax\.', line)]
    if commands:
      blocks.append((_name(commands), commands))
  return blocks


def _name(commands) -> str:
  first = commands[0]
  match = re.search(r'--workdir=runs/tutorial/(\S+)', first)
  if match:
    return match.group(1)
  config = re.search(r'--config=experiments/(\S+?)\.py(?::(\S+))?', first)
  return 'dry_run_' + (config.group(2) or config.group(1))


def _params():
  return [pytest.param(commands, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
          for name, commands in _blocks()]


def test_the_tutorial_has_its_seven_steps():
  names = [name for name, _ in _blocks()]
  assert names == ['mlp', 'gd', 'optimizers', 'splits', 'cnn', 'lstm', 'lm', 'mesh', 'dry_run_124m'], names


def _run(command: str, tmp_path, data_dir):
  """Runs one tutorial command; returns (CompletedProcess, its workdir or None, its args)."""
  words = shlex.split(command)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  while '=' in words[0] and not words[0].startswith('-'):  # VAR=value prefixes
    key, value = words.pop(0).split('=', 1)
    env[key] = value
  assert words[:3] in (['python', '-m', 'bigjax.main'], ['python', '-m', 'bigjax.sweep']), command
  args = [a.replace('--workdir=runs/', f'--workdir={tmp_path}/') for a in words[3:]]
  config = next(a.split('=', 1)[1] for a in args if a.startswith('--config='))
  args += SHORTER[config] + [f'--config.data.data_dir={data_dir}']
  workdir = next((a.split('=', 1)[1] for a in args if a.startswith('--workdir=')), None)
  result = subprocess.run([sys.executable, *words[1:3], *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, f'{command}\n{result.stderr[-3000:]}'
  return result, workdir, args


def _json_lines(stdout) -> list:
  return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


def _check_trains(workdir):
  """The train loss falls from the first logged line to the last; a classifier beats chance."""
  train = read_metrics(workdir, 'train')
  assert len(train) >= 2 and train[-1]['loss'] < train[0]['loss'], [r['loss'] for r in train]
  test = read_metrics(workdir, 'test')
  assert test, 'no test line'
  if 'accuracy' in test[-1] and 'bits_per_byte' not in test[-1]:
    assert test[-1]['accuracy'] > 2 * CHANCE, test[-1]


@pytest.mark.parametrize('commands', _params())
def test_tutorial_block_runs_and_trains(commands, tmp_path, data_dir):
  for command in commands:
    result, workdir, args = _run(command, tmp_path, data_dir)
    mode = next((a.split('=', 1)[1] for a in args if a.startswith('--mode=')), 'train')
    if 'bigjax.sweep' in command:
      with open(os.path.join(workdir, 'results.csv')) as f:
        rows = list(csv.DictReader(f))
      assert rows and all(r['status'] == 'done' for r in rows), rows
      assert all(float(r['test/accuracy_mean']) > 2 * CHANCE for r in rows), rows
    elif '--dry_run' in args:
      (report,) = _json_lines(result.stdout)
      assert report['devices'] == 8 and report['per_device_bytes']['total'] > 0, report
    elif mode == 'eval':
      assert [r['split'] for r in _json_lines(result.stdout)] == ['eval', 'test'], result.stdout
    elif mode == 'predict':
      texts = [a for a in args if a.startswith('--text=')]
      assert len(_json_lines(result.stdout)) == len(texts), result.stdout
    elif mode == 'sample':
      assert result.stdout.count('--- ') >= 1, result.stdout
    else:
      _check_trains(workdir)
