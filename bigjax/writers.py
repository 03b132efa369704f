"""Where metrics go: metrics.jsonl, TensorBoard (tensorboardX), and a console progress line.

Only process 0 writes. Scalars go to metrics.jsonl and TensorBoard; arrays
(per-class figures, confusion matrices, generated examples) go to details.jsonl, and to
TensorBoard as one scalar per class (`eval/per_class_f1/<class>`) and text (TEXT tab). The .jsonl files
are strict JSON: a NaN or infinite value is written as null.

All of it goes through etils.epath, so a gs:// workdir works. tensorboardX writes event files with
open() locally and with its own boto3 / google-cloud-storage clients for s3:// and gs://; for a
bucket, bigjax gives it instead a writer that uploads through epath (see EpathEventFile).
"""

import datetime
import io
import json
import sys
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from bigjax import files


def _is_scalar(value) -> bool:
  return np.ndim(value) == 0


def _finite_or_null(value):
  """value with every NaN and infinity, however deeply nested, replaced by None (JSON null):
  json.dumps would write them as NaN and Infinity, which strict JSON readers reject."""
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite_or_null(v) for v in value]
  return None if isinstance(value, float) and not np.isfinite(value) else value


def _keep_after_resume(line: str, step: int) -> bool:
  """A restored run redoes every step after `step`, and the final test eval."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError:  # a line cut short by a kill
    return False
  return record['step'] < step or (record['step'] == step and record['split'] != 'test')


class MetricWriter:
  """Appends to the workdir's logs; on resume, first drops what the resumed run will redo."""

  def __init__(self, workdir: str, resume_step: int, class_names=()):
    self.enabled = jax.process_index() == 0
    self.class_names = class_names
    self.start = time.time()
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # noqa: PLC0415 (process 0 only)
    self.paths = {name: files.join(workdir, name) for name in ('metrics.jsonl', 'details.jsonl')}
    for path in self.paths.values():
      self._truncate(path, resume_step)
    self.files = {name: files.LineLog(path) for name, path in self.paths.items()}
    if files.is_remote(workdir):
      _events_through_epath(workdir)
    self.tensorboard = SummaryWriter(logdir=str(workdir), flush_secs=10)

  @staticmethod
  def _truncate(path: str, step: int) -> None:
    if not epath.Path(path).exists():
      return
    lines = epath.Path(path).read_text().splitlines(keepends=True)
    with files.replaced_atomically(path) as f:  # a kill here loses nothing
      f.writelines(line for line in lines if _keep_after_resume(line, step))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
    arrays = {k: np.asarray(v).tolist() for k, v in metrics.items() if not _is_scalar(v)}
    elapsed = round(time.time() - self.start, 3)
    for name, values in (('metrics.jsonl', scalars), ('details.jsonl', arrays)):
      if values:
        record = {'step': step, 'split': split, **values, 'time': elapsed}
        self.files[name].write(json.dumps(_finite_or_null(record), allow_nan=False) + '\n')
    for k, v in scalars.items():
      self.tensorboard.add_scalar(f'{split}/{k}', v, step)
    names = class_names(metrics, self.class_names)
    for k, v in arrays.items():
      if k.startswith('per_class_'):
        for name, value in zip(names, v):
          self.tensorboard.add_scalar(f'{split}/{k}/{name}', value, step)
      elif k == 'confusion_matrix':  # markdown: TensorBoard's text tab draws it as a table
        self.tensorboard.add_text(f'{split}/{k}', confusion_table(v, names, markdown=True), step)
      elif k == 'examples':  # generated text: source, reference and output, one block each
        self.tensorboard.add_text(f'{split}/{k}', examples_markdown(v), step)
      else:
        self.tensorboard.add_text(f'{split}/{k}', json.dumps(v), step)

  def close(self) -> None:
    if self.enabled:
      for f in self.files.values():
        f.close()
      self.tensorboard.close()


class EpathEventFile:
  """One TensorBoard event file in a bucket, for tensorboardX's RecordWriter. An object cannot be
  appended to, so each flush (every flush_secs, and at close) uploads the whole file again, as
  tensorboardX's own S3 and GCS writers do; a kill leaves the last upload, whole."""

  def __init__(self, path: str):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    with files.replaced_atomically(self.path, 'wb') as f:
      f.write(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathEventFiles:
  """tensorboardX's writer factory for one URI scheme."""

  def open(self, path: str) -> EpathEventFile:
    return EpathEventFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _events_through_epath(workdir: str) -> None:
  """Sends event files under workdir's scheme (gs, s3, ...) through epath, which needs no client
  library of its own and uses the same credentials as the checkpoints."""
  from tensorboardX import record_writer  # noqa: PLC0415 (process 0 only)
  record_writer.register_writer_factory(str(workdir).split(':', 1)[0], _EpathEventFiles())


def class_names(metrics: dict, names=()) -> list[str]:
  """The dataset's class names if it has them (and they fit), else '0', '1', ..."""
  count = len(metrics.get('per_class_f1', ()))
  return list(names) if len(names) == count else [str(i) for i in range(count)]


def per_class_table(metrics: dict, names=()) -> str:
  """Precision, recall, F1 and support of each class, one line each."""
  names = class_names(metrics, names)
  support = np.asarray(metrics['confusion_matrix']).sum(axis=1)
  width = max(len(n) for n in names + ['class'])
  lines = [f'{"class":<{width}}  precision  recall      f1  support']
  for i, name in enumerate(names):
    precision, recall, f1 = (metrics[f'per_class_{k}'][i] for k in ('precision', 'recall', 'f1'))
    lines.append(f'{name:<{width}}  {precision:9.4f}  {recall:6.4f}  {f1:6.4f}  {support[i]:7d}')
  return '\n'.join(lines)


def confusion_table(counts, names=(), markdown: bool = False) -> str:
  """Rows: true class; columns: predicted class."""
  counts = np.asarray(counts)
  names = list(names) or [str(i) for i in range(len(counts))]
  if markdown:
    rows = [' | '.join(['label \\ predicted', *names]), ' | '.join(['---'] * (len(names) + 1))]
    rows += [' | '.join([name, *map(str, row)]) for name, row in zip(names, counts)]
    return '\n'.join(rows)
  width = max(len(str(counts.max())), 3)
  label_width = max(len(n) for n in names)
  header = ' ' * label_width + '  ' + ' '.join(f'{i:>{width}}' for i in range(len(names)))
  rows = [f'{name:<{label_width}}  ' + ' '.join(f'{c:>{width}}' for c in row)
          for name, row in zip(names, counts)]
  return '\n'.join([header, *rows, '(rows: label; columns: predicted class, by row number from 0)'])


def examples_markdown(examples: list[dict]) -> str:
  return '\n\n---\n\n'.join('\n\n'.join(f'**{k}**: {v}' for k, v in example.items()) for example in examples)


def format_metrics(metrics: dict) -> str:
  return ' '.join(f'{k}={float(v):.4g}' for k, v in metrics.items() if _is_scalar(v))


class Progress:
  """step/total, metrics (throughput included) and ETA: tqdm on a terminal, log lines otherwise."""

  def __init__(self, total: int, start: int):
    self.total = total
    self.last_step, self.last_time = start, time.time()
    self.steps_per_s = 0.0
    self.bar = None
    if jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm  # noqa: PLC0415
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)

  def tick(self, step: int) -> float:
    """Steps per second since the last tick."""
    now = time.time()
    self.steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    return self.steps_per_s

  def show(self, step: int, metrics: dict) -> None:
    if jax.process_index() != 0:
      return
    eta = datetime.timedelta(seconds=round((self.total - step) / max(self.steps_per_s, 1e-9)))
    if self.bar is not None:
      self.bar.set_postfix_str(f'{format_metrics(metrics)} {self.steps_per_s:.1f} steps/s', refresh=False)
      self.bar.update(step - self.bar.n)
    else:
      logging.info('step %d/%d %s | %.1f steps/s ETA %s', step, self.total, format_metrics(metrics),
                   self.steps_per_s, eta)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
