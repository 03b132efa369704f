"""A sweep's report, built from its run folders alone: results.csv, results.md and two plots.

One row per variant: its overrides, a status, the steps and mean wall time, and each final eval
and test metric as mean and sample standard deviation over the seeds that finished. A run is
finished when its metrics.jsonl holds the test record the trainer writes last, so runs started
by hand or by a cluster scheduler (`--print`) count too.
"""

import csv
import json
import math
import os
import sys

import numpy as np

from bigjax import files

STATUS_FILE = 'sweep_status.json'  # in each run folder, beside the trainer's files (bigjax.sweep writes it)
CSV_FILE, MD_FILE = 'results.csv', 'results.md'
CURVES_FILE, BAR_FILE = 'curves.png', 'bar.png'
_NOT_METRICS = ('step', 'split', 'time')


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or cut short by a kill
    return {}


def read_metrics(workdir: str) -> list[dict]:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return []
  records = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    records.append({k: math.nan if v is None else v for k, v in record.items()})  # null: a NaN or Inf
  return records


def is_done(workdir: str) -> bool:
  return any(r['split'] == 'test' for r in read_metrics(workdir))


def _final(records: list[dict], split: str) -> dict:
  last = [r for r in records if r['split'] == split]
  return {f'{split}/{k}': v for k, v in last[-1].items() if k not in _NOT_METRICS} if last else {}


def collect(sweep_dir: str) -> list[dict]:
  """One dict per variant: name, overrides, status, runs (each seed's final metrics and curves)."""
  sweep = read_json(os.path.join(sweep_dir, 'sweep.json'))
  variants = []
  for variant in sweep['variants']:
    runs, failures = [], []
    for seed in range(sweep['seeds']):
      run_dir = os.path.join(sweep_dir, variant['name'], f'seed{seed}')
      records, status = read_metrics(run_dir), read_json(os.path.join(run_dir, STATUS_FILE))
      if any(r['split'] == 'test' for r in records):
        wall = status.get('wall_s') or max(r['time'] for r in records)
        runs.append({'seed': seed, 'steps': max(r['step'] for r in records), 'wall_s': wall,
                     'final': {**_final(records, 'eval'), **_final(records, 'test')}, 'records': records})
      elif status.get('status') == 'failed':
        failures.append({'seed': seed, 'error': status['error'], 'log_tail': status['log_tail']})
    if failures:
      state = f'failed {len(failures)}/{sweep["seeds"]}: {failures[0]["error"]}'
    else:
      state = 'done' if len(runs) == sweep['seeds'] else f'{len(runs)}/{sweep["seeds"]} done'
    variants.append({**variant, 'status': state, 'runs': runs, 'failures': failures})
  return variants


def _mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for one seed)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def summarize(variants: list[dict]) -> tuple[list[str], list[dict]]:
  """(metric names, one row per variant) with each metric's (mean, std) over finished seeds."""
  metrics = []
  for variant in variants:
    for run in variant['runs']:
      metrics += [k for k in run['final'] if k not in metrics and np.ndim(run['final'][k]) == 0]
  rows = []
  for variant in variants:
    runs = variant['runs']
    row = {'variant': variant['name'], 'overrides': variant['overrides'], 'status': variant['status'],
           'seeds': len(runs),
           'steps': max((r['steps'] for r in runs), default=None),
           'wall_s': float(np.mean([r['wall_s'] for r in runs])) if runs else None}
    for metric in metrics:
      values = [r['final'][metric] for r in runs if metric in r['final']]
      row[metric] = _mean_std(values) if values else (math.nan, math.nan)
    rows.append(row)
  return metrics, rows


def main_metric(metrics: list[str], requested: str | None) -> str | None:
  if requested in metrics:
    return requested
  if requested and metrics:
    print(f'bigjax.sweep: warning: no metric {requested}; the runs have {", ".join(metrics)}',
          file=sys.stderr)
  return next((m for m in ('test/accuracy', 'test/loss') if m in metrics), metrics[0] if metrics else None)


def write_csv(path: str, metrics: list[str], rows: list[dict]) -> None:
  keys = list(dict.fromkeys(k for row in rows for k in row['overrides']))
  with files.replaced_atomically(path, newline='') as f:
    out = csv.writer(f)
    out.writerow(['variant', *keys, 'status', 'seeds', 'steps', 'wall_s',
                  *[f'{m}_{stat}' for m in metrics for stat in ('mean', 'std')]])
    for row in rows:
      out.writerow([row['variant'], *[row['overrides'].get(k, '') for k in keys], row['status'], row['seeds'],
                    row['steps'] if row['steps'] is not None else '',
                    f'{row["wall_s"]:.1f}' if row['wall_s'] is not None else '',
                    *[repr(x) for m in metrics for x in row[m]]])  # repr: every digit, for reuse


def _same(a: tuple, b: tuple) -> bool:
  return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def _cell(mean: float, std: float) -> str:
  if math.isnan(mean):
    return ''
  return f'{mean:.4f}' if math.isnan(std) else f'{mean:.4f} ± {std:.4f}'


def markdown(sweep: dict, metrics: list[str], rows: list[dict], variants: list[dict], main: str | None
             ) -> str:
  """The table (the best mean of the main metric in bold), then each failed run's error and log."""
  config = [f'--config={sweep["config"]}'] if sweep['config'] else []  # None: each variant names its own
  command = ' '.join(['python -m bigjax.sweep', *config, *sweep['overrides'], f'--sweep={sweep["sweep"]}',
                      f'--seeds={sweep["seeds"]}'])
  lower_is_better = main is not None and main.rsplit('/', 1)[-1] in ('loss', 'perplexity', 'bits_per_byte')
  means = [row[main][0] for row in rows if main and not math.isnan(row[main][0])]
  best = (min(means) if lower_is_better else max(means)) if means else None
  # Multi-class precision equals precision_macro, and so on: one column each (results.csv has all).
  shown = [m for i, m in enumerate(metrics) if m == main or not any(
      all(_same(row[m], row[other]) for row in rows) for other in metrics[:i])]
  lines = [f'`{command}`', '',
           f'Mean ± sample std over the seeds that finished; main metric {main}, best in bold. '
           f'A column equal to an earlier one in every row is left out (results.csv has all).', '',
           '| ' + ' | '.join(['variant', 'status', 'seeds', 'steps', 'wall (s)', *shown]) + ' |',
           '|' + '---|' * (5 + len(shown))]
  for row in rows:
    cells = [_cell(*row[m]) for m in shown]
    if main and best is not None and row[main][0] == best:
      cells[shown.index(main)] = f'**{cells[shown.index(main)]}**'
    wall = f'{row["wall_s"]:.1f}' if row['wall_s'] is not None else ''
    status = row['status'].replace('bigjax: error: ', '').replace('|', '\\|')
    lines.append('| ' + ' | '.join([row['variant'], status, str(row['seeds']), str(row['steps'] or ''), wall,
                                    *cells]) + ' |')
  for variant in variants:
    for failure in variant['failures']:
      lines += ['', f'### {variant["name"]} seed {failure["seed"]} failed', '', failure['error']]
      if failure['log_tail'].strip() != failure['error']:
        lines += ['', '```', failure['log_tail'].rstrip(), '```']
  return '\n'.join(lines) + '\n'


def _curve(runs: list[dict], split: str, metric: str):
  """Steps, and the value at each step of every seed (steps all seeds logged)."""
  series = [{r['step']: r[metric] for r in run['records'] if r['split'] == split and metric in r}
            for run in runs]
  steps = sorted(set.intersection(*[set(s) for s in series])) if series else []
  return np.array(steps), np.array([[s[step] for step in steps] for s in series])


def plot(sweep_dir: str, variants: list[dict], rows: list[dict], main: str | None) -> None:
  """curves.png: train loss and the eval main metric, mean of seeds, min-max shaded; bar.png."""
  import logging

  import matplotlib
  matplotlib.use('Agg')  # files only: no display needed
  import matplotlib.pyplot as plt
  logging.getLogger('matplotlib').setLevel(logging.WARNING)  # it logs its font cache at INFO

  eval_metric = main.replace('test/', '', 1) if main else 'loss'
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for variant in variants:
    for ax, split, metric in ((axes[0], 'train', 'loss'), (axes[1], 'eval', eval_metric)):
      steps, values = _curve(variant['runs'], split, metric)
      if len(steps):
        line, = ax.plot(steps, values.mean(0), label=variant['name'], marker='o' if len(steps) < 20 else None)
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
  for ax, title in ((axes[0], 'train loss'), (axes[1], f'eval {eval_metric}')):
    ax.set(xlabel='step', title=title)
    ax.grid(alpha=0.3)
  axes[0].set_yscale('log')
  axes[1].legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(os.path.join(sweep_dir, CURVES_FILE), dpi=100)
  plt.close(fig)

  shown = [row for row in rows if main and not math.isnan(row[main][0])]
  fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(shown) + 2), 4))
  means = np.array([row[main][0] for row in shown])
  stds = np.nan_to_num(np.array([row[main][1] for row in shown]))
  bars = ax.bar([row['variant'] for row in shown], means, yerr=stds, capsize=4)
  ax.bar_label(bars, fmt='%.4f', label_type='center', fontsize='small', color='white')
  if shown:  # zoomed to the differences: close scores would all look alike from 0
    low, high = (means - stds).min(), (means + stds).max()
    pad = max(high - low, 1e-3 * max(abs(high), 1e-12)) * 0.3
    ax.set_ylim(low - pad, high + pad)
  ax.set(ylabel='mean ± std over seeds', title=f'{main} (axis zoomed)' if main else 'no finished runs')
  ax.tick_params(axis='x', labelrotation=30)
  fig.tight_layout()
  fig.savefig(os.path.join(sweep_dir, BAR_FILE), dpi=100)
  plt.close(fig)


def write(sweep_dir: str, metric: str | None = None) -> str:
  """Writes results.csv, results.md, curves.png and bar.png; returns the markdown."""
  sweep = read_json(os.path.join(sweep_dir, 'sweep.json'))
  variants = collect(sweep_dir)
  metrics, rows = summarize(variants)
  main = main_metric(metrics, metric)
  write_csv(os.path.join(sweep_dir, CSV_FILE), metrics, rows)
  text = markdown(sweep, metrics, rows, variants, main)
  with files.replaced_atomically(os.path.join(sweep_dir, MD_FILE)) as f:
    f.write(text)
  plot(sweep_dir, variants, rows, main)
  return text
