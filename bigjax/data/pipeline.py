"""The grain input pipeline over random-access splits.

Train: one global shuffle from the seed (a new order every epoch); each host
reads only the rows of each global batch that its devices hold, so the global
batch is the same array whatever the number of hosts. Element i of
the grain dataset is batch i, read in one call, which keeps per-row Python off
the hot path. Batch i depends on i alone, so a run resumed at step i starts the
iterator at i and sees exactly the batches an uninterrupted run would have seen,
on any number of hosts: no iterator state is saved.

Eval: every example exactly once, padded to whole batches; padding rows carry
mask 0 so they count for nothing.

Bucketing (`bucket` > 0, splits with 'tokens' padded at the end and each row's
'length', a pair's 'source' and 'target' with theirs, or ragged 'audio' with its
'audio_length', in samples): a batch's tokens are cut (its utterances padded)
to the multiple of `bucket` that holds its longest row, and rows of similar length
(a pair's: the longer of the two) are batched together, so short texts do not pay
for long ones. Train batches are formed from windows of `_WINDOW` batches
of shuffled rows, sorted by length, and then the batches of the epoch are
shuffled; the remainder of an epoch that does not fill a batch is left out of it.
Eval reads rows in order of length. Rows are padded with the pad id at the end,
and the models ignore padding, so cutting it changes nothing but the time.
"""

import grain
import numpy as np
from absl import flags


def _stack(rows: list[dict], ragged=()) -> dict:
  """Rows -> arrays with one row per example; `ragged` features (images of varied sizes) as lists."""
  return {k: [np.asarray(r[k]) for r in rows] if k in ragged else np.stack([np.asarray(r[k]) for r in rows])
          for k in rows[0]}


def object_array(values: list) -> np.ndarray:
  """One row per value, each kept whole (images or utterances of varied sizes)."""
  array = np.empty(len(values), object)
  array[:] = values
  return array


def pad_rows(rows: list, width: int) -> np.ndarray:
  """1-D rows of varied lengths (utterances) -> (len(rows), width), zero-padded at the end."""
  out = np.zeros((len(rows), width), rows[0].dtype)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row[:width]
  return out


class Split:
  """One split: len(split), and split.read(indices) -> a dict of stacked numpy arrays.

  in_memory reads the whole split once, for datasets that fit in host memory;
  otherwise each read goes to the source (tfds.data_source: ArrayRecord files).
  `record` maps each source example to the features kept (all, by default); `ragged`
  names features whose rows vary in shape (images of varied sizes): read as lists.
  """

  def __init__(self, source=None, in_memory: bool = False, arrays: dict | None = None, *,
               record=None, ragged=()):
    self.source, self.record, self.ragged = source, record, tuple(ragged)
    if arrays is None and in_memory:
      arrays = self._read_source(range(len(source)))
      arrays = {k: object_array(v) if k in self.ragged else v for k, v in arrays.items()}
    self.arrays = arrays  # or given whole: {name: array with one row per example}

  def _read_source(self, indices) -> dict:
    examples = (self.source[int(i)] for i in indices)
    return _stack([self.record(e) if self.record else e for e in examples], self.ragged)

  def __len__(self) -> int:
    return len(self.source) if self.arrays is None else len(next(iter(self.arrays.values())))

  def take(self, n: int) -> 'Split':
    """The first n examples (all if n is 0 or more than there are)."""
    if not n or n >= len(self):
      return self
    arrays = self.arrays if self.arrays is not None else self.read(np.arange(n))
    arrays = {k: object_array(list(v[:n])) if k in self.ragged else v[:n] for k, v in arrays.items()}
    return Split(arrays=arrays, ragged=self.ragged)

  def read(self, indices) -> dict:
    indices = np.asarray(indices)
    if self.arrays is not None:
      return {k: list(v[indices]) if k in self.ragged else v[indices] for k, v in self.arrays.items()}
    return self._read_source(indices)


_WINDOW = 32  # batches sorted by length together when bucketing


class _EpochOrder:
  """Global position -> example index: epoch e is a permutation seeded by (seed, e).

  One numpy permutation per epoch instead of grain's per-element index shuffle,
  which costs tens of microseconds of Python for every example. With `lengths`, the
  epoch is bucketed: whole batches of similar length, in shuffled order.
  """

  def __init__(self, n: int, seed: int, lengths=None, batch_size: int = 0):
    self.n, self.seed, self.cache = n, seed, {}
    self.lengths, self.batch_size = lengths, batch_size
    self.epoch_size = n - n % batch_size if lengths is not None else n

  def _epoch(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, epoch))
    order = rng.permutation(self.n)
    if self.lengths is None:
      return order
    order, b = order[:self.epoch_size], self.batch_size
    window = _WINDOW * b
    for start in range(0, len(order), window):  # stable sorts: ties keep the shuffled order
      chunk = order[start:start + window]
      order[start:start + window] = chunk[np.argsort(self.lengths[chunk], kind='stable')]
    batches = order.reshape(-1, b)
    return batches[rng.permutation(len(batches))].reshape(-1)

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs = positions // self.epoch_size
    for epoch in np.unique(epochs):
      if epoch not in self.cache:
        self.cache = {k: v for k, v in self.cache.items() if k >= epoch - 1}  # keep two epochs
        self.cache[epoch] = self._epoch(int(epoch))
    return np.array([self.cache[e][p] for e, p in zip(epochs, positions % self.epoch_size)])


# Padded token arrays a split may hold (or ragged audio), and the array of each row's length beside them.
PADDED = {'tokens': 'length', 'source': 'source_length', 'target': 'target_length', 'audio': 'audio_length'}


def _cut(batch: dict, global_lengths: dict, bucket: int) -> dict:
  """Each padded array cut to the multiple of `bucket` that holds the global batch's longest row."""
  cut = dict(batch)
  for key, lengths in global_lengths.items():
    rows, width = batch[key], -(-max(int(lengths.max()), 1) // bucket) * bucket
    # Ragged rows (utterances) are padded to that width, the same on every host.
    cut[key] = pad_rows(rows, width) if isinstance(rows, list) else rows[:, :min(rows.shape[1], width)]
  return cut


def _lengths(split: Split, bucket: int) -> dict | None:
  """{padded array: each row's length, at most its width} when bucketing."""
  if not bucket:
    return None
  present = {k: v for k, v in PADDED.items() if split.arrays is not None and k in split.arrays}
  if not present or any(v not in split.arrays for v in present.values()):
    raise ValueError('bucketing needs a split of padded tokens with their lengths (text datasets)')
  return {k: split.arrays[v] if split.arrays[k].ndim == 1 else  # ragged: each row as long as it is
          np.minimum(split.arrays[v], split.arrays[k].shape[1]) for k, v in present.items()}


def _sort_key(lengths: dict | None):
  """Rows are bucketed by their longest padded array (a pair: the longer of source and target)."""
  return None if lengths is None else np.max(np.stack(list(lengths.values())), axis=0)


def _rows(lengths: dict, indices) -> dict:
  return {k: v[indices] for k, v in lengths.items()}


def _parse_absl_flags() -> None:
  """grain's worker processes read absl flags; a program that never parsed them (a test, a
  notebook) runs with their defaults, as bigjax.main does with its own parsed flags."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_iterator(split: Split, preprocess, batch_size: int, seed: int, rows=None, *, bucket: int = 0,
                   start: int = 0, augment=None, workers: int = 0, prefetch: int = 2):
  """An endless iterator of batches from a shuffled order of the split, from batch `start` on.

  `rows` are the rows of each global batch this host reads (all, by default); on
  several hosts they are the rows its devices hold, so that the global batch is the
  same as on one host (sharding.host_batch_rows). `bucket`: see the module's doc.
  `augment(batch, seed, step, rows)`: the train transform (images.augment), applied before
  preprocess; its random draws depend on (seed, step, global row) alone.
  `workers` > 0: batches are read (decoded, augmented) in that many grain worker processes,
  worker k making batches k, k + workers, ...: the same batches as with 0, in the same order.
  The program must guard its entry point with `if __name__ == '__main__'` (workers are spawned).
  `prefetch`: batches read ahead (per worker, with workers).
  """
  lengths = _lengths(split, bucket)
  order = _EpochOrder(len(split), seed, _sort_key(lengths), batch_size)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)

  def load(step: int) -> dict:
    batch = split.read(order(step * batch_size + rows))
    if bucket:  # every host cuts to the same width: the whole global batch's longest row
      batch = _cut(batch, _rows(lengths, order(step * batch_size + np.arange(batch_size))), bucket)
    if augment is not None:
      batch = augment(batch, seed, step, rows)
    return preprocess(batch)

  ds = grain.MapDataset.range(start, 2**62).map(load)  # element i is batch i: a slice of forever
  # The prefetch thread only reads ahead; which rows a batch holds depends on its index alone.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1 if workers else prefetch))
  if workers:
    _parse_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch))
  return iter(ds)


def eval_batches(split: Split, preprocess, batch_size: int, rows=None, *, bucket: int = 0):
  """Yields every example once, in global batches padded at the end, with a 0/1 'mask'.

  `rows` as in train_iterator: this host's rows of each global batch. `bucket`: in order
  of length, each batch cut short (see the module's doc).
  """
  n = len(split)
  lengths = _lengths(split, bucket)
  order = np.arange(n) if lengths is None else np.argsort(_sort_key(lengths), kind='stable')
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  for start in range(0, n, batch_size):
    positions = start + rows
    batch = split.read(order[np.minimum(positions, n - 1)])
    if bucket:
      batch = _cut(batch, _rows(lengths, order[start:start + batch_size]), bucket)
    yield {**preprocess(batch), 'mask': (positions < n).astype(np.int32)}
