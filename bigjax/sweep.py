"""Ablation sweeps: one base config, a list of changes, several seeds, then a table and plots.

  python -m bigjax.sweep --config=experiments/digits_mlp.py \
      --sweep=experiments/ablations/activations.py --workdir=runs/act [--seeds=3] [--parallel=1]
  python -m bigjax.sweep ... --print        # the commands, one per line, for a cluster scheduler
  python -m bigjax.sweep --report=runs/act  # rebuild results.md, results.csv and the plots

A sweep file's `get_sweep()` returns a list of variants, each a dict of config overrides
({'model.activation': 'gelu'}); `sweep`, `product` and `zipped` below build such lists. Two
keys are not overrides: 'config', a variant's own config file (to compare whole experiments),
and 'name', its name in folders and tables (default: made from its overrides). Extra
`--config.a.b=v` flags apply to every run, before the variant's.

Each (variant, seed) is one `python -m bigjax.main` process in DIR/<variant>/seed<k>, with
`--config.seed=k` for k in 0..seeds-1. Rerunning the same command skips finished runs and
resumes interrupted ones from their checkpoints (the trainer's own resume). A run that fails is
recorded with its error and the others go on. Ctrl-C (or SIGTERM) stops every run and exits 130.
"""

import ctypes
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from absl import app, flags

from bigjax import files, sweep_report
from bigjax.config import fail

_CONFIG = flags.DEFINE_string('config', None, 'Base config, FILE[:ARG], as for bigjax.main (optional when '
                              "every variant names its own under the key 'config').")
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file: get_sweep() returns a list of override dicts.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep folder: one sub-folder per run, and the report.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Runs per variant, with config.seed = 0..seeds-1.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Runs at a time.')
_PRINT = flags.DEFINE_bool('print', False, 'Print the commands of the runs not yet done; run nothing.')
_REPORT = flags.DEFINE_string('report', None, 'Only rebuild the report of the sweep in this folder.')
_METRIC = flags.DEFINE_string('metric', None, 'Main metric of the bar chart; default test/accuracy, '
                              'else test/loss.')
_MAIN = flags.DEFINE_string('main', f'{shlex.quote(sys.executable)} -m bigjax.main',
                            'The command that trains one run (prefix it with srun, nice, ... as needed).')

STATUS_FILE = sweep_report.STATUS_FILE
LOG_FILE = 'sweep.log'  # the run's stdout and stderr
STOP_GRACE_S = 30  # how long a stopped run may take to exit before SIGKILL


RESERVED_KEYS = ('config', 'name')  # a variant's own config file; its name in folders and tables


class SweepError(ValueError):
  """Bad sweep input: printed in one line, exit status 2."""


# Building variant lists, as in a sweep file:
#   product(sweep('model.depth', [1, 2]), sweep('model.width', [64, 256]))   -> 4 variants
#   zipped(sweep('optim.name', ['sgd', 'adam']), sweep('optim.lr', [0.1, 1e-3]))  -> 2 variants

def sweep(key: str, values) -> list[dict]:
  """One variant per value of one field."""
  return [{key: value} for value in values]


def product(*sweeps: list[dict]) -> list[dict]:
  """Every combination of one variant from each list (the last list varies fastest)."""
  return [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*sweeps)]


def zipped(*sweeps: list[dict]) -> list[dict]:
  """The i-th variants of equally long lists, merged."""
  if len({len(s) for s in sweeps}) > 1:
    raise SweepError(f'zipped() needs lists of one length, got lengths {[len(s) for s in sweeps]}')
  return [{k: v for part in parts for k, v in part.items()} for parts in zip(*sweeps)]


def load_sweep(path: str) -> list[dict]:
  """The variants of a sweep file, checked: a non-empty list of dicts of field -> scalar."""
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path} does not exist (paths are relative to {os.getcwd()})')
  spec = importlib.util.spec_from_file_location('_bigjax_sweep', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    variants = module.get_sweep()
  except SweepError:
    raise
  except Exception as e:  # noqa: BLE001 (any error in the user's file is bad input)
    first_line = str(e).splitlines()[0] if str(e) else ''
    raise SweepError(f'sweep file {path} failed: {type(e).__name__}: {first_line}') from None
  if not isinstance(variants, list) or not variants:
    raise SweepError(f'{path}: get_sweep() must return a non-empty list of override dicts')
  for variant in variants:
    if not isinstance(variant, dict):
      raise SweepError(f'{path}: every variant must be a dict of overrides, got {variant!r}')
    for key, value in variant.items():
      if not isinstance(key, str) or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', key):
        raise SweepError(f'{path}: override key {key!r} is not a config path like "model.width"')
      if key == 'seed':
        raise SweepError(f'{path}: variants cannot set seed: use --seeds=N (seeds 0..N-1)')
      reserved_not_str = key in RESERVED_KEYS and not isinstance(value, str)
      if not isinstance(value, str | int | float | bool) or reserved_not_str:
        raise SweepError(f'{path}: {key}={value!r}: values must be str, int, float or bool '
                         '(str for "config" and "name")')
  return variants


def _short(value) -> str:
  text = str(value)
  if text.endswith('.py') or '.py:' in text:  # a config file: its name and variant
    text = os.path.basename(text).replace('.py', '')
  return re.sub(r'[^\w.+-]', '-', text)


def variant_names(variants: list[dict]) -> list[str]:
  """Readable, unique folder names: 'activation=gelu', 'depth=2,width=64', 'base' for {}.

  A key is shortened to its last part unless two keys of the sweep end alike. A variant's
  'name' key, if any, is its name.
  """
  keys = {k for v in variants for k in v if k != 'name'}
  ends = [k.rsplit('.', 1)[-1] for k in keys]
  short = {k: k.rsplit('.', 1)[-1] if ends.count(k.rsplit('.', 1)[-1]) == 1 else k for k in keys}
  names = [_short(variant['name']) if 'name' in variant else
           ','.join(f'{short[k]}={_short(v)}' for k, v in variant.items()) or 'base' for variant in variants]
  for i, name in enumerate(names):
    if names.index(name) != i:
      raise SweepError(f'variants {names.index(name)} and {i} are both named {name!r}: each variant '
                       'must differ from the others')
  return names


class Run(NamedTuple):
  variant: str
  seed: int
  workdir: str
  command: list[str]


def _flag_value(value) -> str:
  return str(value)  # bools print as True/False, which ml_collections parses back


def plan(variants: list[dict], names: list[str], *, main: list[str], config: str, base_overrides: list[str],
         seeds: int, workdir: str) -> list[Run]:
  """Every (variant, seed) run, seeds of a variant together, in the sweep file's order."""
  runs = []
  for variant, name in zip(variants, names):
    overrides = [f'--config.{k}={_flag_value(v)}' for k, v in variant.items() if k not in RESERVED_KEYS]
    for seed in range(seeds):
      run_dir = os.path.join(workdir, name, f'seed{seed}')
      command = [*main, f'--config={variant.get("config", config)}', *base_overrides, *overrides,
                 f'--config.seed={seed}', f'--workdir={run_dir}']
      runs.append(Run(name, seed, run_dir, command))
  return runs


def _write_json(path: str, record: dict) -> None:
  with files.replaced_atomically(path) as f:
    json.dump(record, f, indent=2)


def _die_with_parent() -> None:
  """In the child, before exec: SIGTERM when the sweep dies, even by SIGKILL (Linux)."""
  if sys.platform.startswith('linux'):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Stop(Exception):
  """Raised by the SIGINT/SIGTERM handler in the sweep process."""


def _raise_stop(signum, frame):
  raise _Stop(signal.Signals(signum).name)


def _error_line(log_tail: str) -> str:
  """bigjax's one-line error (or stop reason) if the log has one, else its last line."""
  lines = [line for line in log_tail.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith(('bigjax: error:', 'bigjax: stopped:'))
            or re.match(r'\w*Error\b', line)]
  return (errors or lines or ['no output'])[-1][:300]


def _tail(path: str, lines: int = 30) -> str:
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def execute(runs: list[Run], parallel: int, log=print) -> None:
  """Runs what is not done, `parallel` at a time; records each run's status in its folder."""
  todo = [r for r in runs if not sweep_report.is_done(r.workdir)]
  log(f'sweep: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run, '
      f'{parallel} at a time')
  active = {}  # Popen -> (run, start time, log file, wall seconds of earlier attempts)
  finished = 0
  previous = {signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
  try:
    while todo or active:
      while todo and len(active) < parallel:
        run = todo.pop(0)
        os.makedirs(run.workdir, exist_ok=True)
        status_path = os.path.join(run.workdir, STATUS_FILE)
        earlier = sweep_report.read_json(status_path).get('wall_s', 0.0)
        _write_json(status_path, {'status': 'running', 'command': shlex.join(run.command), 'wall_s': earlier})
        log_file = open(os.path.join(run.workdir, LOG_FILE), 'a')
        # Its own session: Ctrl-C reaches the sweep only, which then stops each run's whole group.
        proc = subprocess.Popen(run.command, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 (one thread)
        active[proc] = (run, time.time(), log_file, earlier)
      time.sleep(0.1)
      for proc in [p for p in active if p.poll() is not None]:
        run, start, log_file, earlier = active.pop(proc)
        log_file.close()
        finished += 1
        log(f'sweep: [{finished}/{finished + len(todo) + len(active)}] '
            + _record(run, proc.returncode, earlier + time.time() - start))
  except _Stop as stop:
    log(f'sweep: {stop}: stopping {len(active)} run(s); rerun the same command to resume')
    _stop(active)
    raise
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def _record(run: Run, returncode: int, wall_s: float) -> str:
  """Writes the run's status file; returns its progress line."""
  tail = _tail(os.path.join(run.workdir, LOG_FILE))
  done = returncode == 0 and sweep_report.is_done(run.workdir)
  status = {'status': 'done' if done else 'failed', 'returncode': returncode, 'wall_s': round(wall_s, 3),
            'command': shlex.join(run.command)}
  if not done:
    status.update(error=_error_line(tail), log_tail=tail)
  _write_json(os.path.join(run.workdir, STATUS_FILE), status)
  what = 'done' if done else f'FAILED (exit {returncode}): {status["error"]}'
  return f'{run.variant} seed {run.seed} {what} in {wall_s:.1f} s'


def _stop(active: dict) -> None:
  """SIGTERM to every run's process group, SIGKILL after a grace period; waits for all of them."""
  for proc in active:
    try:
      os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
      pass
  deadline = time.time() + STOP_GRACE_S
  for proc, (run, start, log_file, earlier) in active.items():
    try:
      proc.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    log_file.close()
    _write_json(os.path.join(run.workdir, STATUS_FILE),
                {'status': 'interrupted', 'wall_s': round(earlier + time.time() - start, 3),
                 'command': shlex.join(run.command)})


def _checked_plan(base_overrides: list[str]) -> tuple[dict, list[Run]]:
  """DIR/sweep.json's record (what the report needs) and the runs, from the flags; SweepError if bad."""
  for name, flag in (('--sweep', _SWEEP), ('--workdir', _WORKDIR)):
    if not flag.value:
      raise SweepError(f'{name} is required (or --report=DIR to rebuild a report)')
  if _SEEDS.value < 1 or _PARALLEL.value < 1:
    raise SweepError('--seeds and --parallel must be >= 1')
  variants = load_sweep(_SWEEP.value)
  names = variant_names(variants)
  for variant in variants:
    config_path = variant.get('config', _CONFIG.value or '').partition(':')[0]
    if not config_path:
      raise SweepError('--config=FILE[:ARG] is required unless every variant names its own config')
    if not os.path.isfile(config_path):
      raise SweepError(f'config file {config_path} does not exist (paths are relative to {os.getcwd()})')
  old = sweep_report.read_json(os.path.join(_WORKDIR.value, 'sweep.json'))
  if old and (old['config'], old['overrides']) != (_CONFIG.value, base_overrides):
    was = ' '.join([f'--config={old["config"]}', *old['overrides']])
    raise SweepError(f'{_WORKDIR.value} holds a sweep of {was}: use another --workdir, or the same base '
                     'config and overrides')
  record = {'config': _CONFIG.value, 'overrides': base_overrides, 'sweep': _SWEEP.value,
            'seeds': _SEEDS.value, 'variants': [{'name': n, 'overrides': v} for n, v in zip(names, variants)]}
  runs = plan(variants, names, main=shlex.split(_MAIN.value), config=_CONFIG.value,
              base_overrides=base_overrides, seeds=_SEEDS.value, workdir=_WORKDIR.value)
  return record, runs


def main(argv):
  base_overrides = [a for a in argv[1:] if a.startswith('--config.')]
  unexpected = [a for a in argv[1:] if not a.startswith('--config.')]
  try:
    if unexpected:
      raise SweepError(f'unexpected arguments: {" ".join(unexpected)}')
    if _REPORT.value:
      if not os.path.isfile(os.path.join(_REPORT.value, 'sweep.json')):
        raise SweepError(f'{_REPORT.value} holds no sweep.json: pass the --workdir of a sweep')
      print(sweep_report.write(_REPORT.value, _METRIC.value), end='')
      return
    record, runs = _checked_plan(base_overrides)
  except SweepError as e:
    fail(str(e))
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, 'sweep.json'), record)
  if _PRINT.value:
    for run in runs:
      if not sweep_report.is_done(run.workdir):
        print(shlex.join(run.command))
    return
  try:
    execute(runs, _PARALLEL.value)
  except _Stop:
    sweep_report.write(workdir, _METRIC.value)
    sys.exit(130)
  print(sweep_report.write(workdir, _METRIC.value), end='')


def parse_flags(argv):
  """absl flags, except --config.a.b=v overrides: those are passed on to every run."""
  overrides = [a for a in argv if a.startswith('--config.')]
  try:
    return flags.FLAGS([a for a in argv if not a.startswith('--config.')]) + overrides
  except flags.Error as e:
    fail(str(e).splitlines()[0])


if __name__ == '__main__':
  # Sweep files import bigjax.sweep: let them get this module, not a second copy with its own flags.
  sys.modules.setdefault('bigjax.sweep', sys.modules[__name__])
  app.run(main, flags_parser=parse_flags)
