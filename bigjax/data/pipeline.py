"""The grain input pipeline over random-access splits.

Train: one global shuffle from the seed (a new order every epoch); each host
reads only the rows of each global batch that its devices hold, so the global
batch is the same array whatever the number of hosts. Element i of
the grain dataset is batch i, read in one call, which keeps per-row Python off
the hot path. The iterator is grain's, checkpointed with the model, so a
resumed run sees exactly the batches an uninterrupted run would have seen.

Eval: every example exactly once, padded to whole batches; padding rows carry
mask 0 so they count for nothing.
"""

import grain
import numpy as np


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class Split:
  """One split: len(split), and split.read(indices) -> a dict of stacked numpy arrays.

  in_memory reads the whole split once, for datasets that fit in host memory;
  otherwise each read goes to the source (tfds.data_source: ArrayRecord files).
  """

  def __init__(self, source=None, in_memory: bool = False, arrays: dict | None = None):
    self.source = source
    if arrays is None and in_memory:
      arrays = _stack([source[i] for i in range(len(source))])
    self.arrays = arrays  # or given whole: {name: array with one row per example}

  def __len__(self) -> int:
    return len(self.source) if self.arrays is None else len(next(iter(self.arrays.values())))

  def read(self, indices) -> dict:
    indices = np.asarray(indices)
    if self.arrays is not None:
      return {k: v[indices] for k, v in self.arrays.items()}
    return _stack([self.source[int(i)] for i in indices])


class _EpochOrder:
  """Global position -> example index: epoch e is a permutation seeded by (seed, e).

  One numpy permutation per epoch instead of grain's per-element index shuffle,
  which costs tens of microseconds of Python for every example.
  """

  def __init__(self, n: int, seed: int):
    self.n, self.seed, self.cache = n, seed, {}

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs = positions // self.n
    for epoch in np.unique(epochs):
      if epoch not in self.cache:
        self.cache = {k: v for k, v in self.cache.items() if k >= epoch - 1}  # keep two epochs
        self.cache[epoch] = np.random.default_rng((self.seed, int(epoch))).permutation(self.n)
    return np.array([self.cache[e][p] for e, p in zip(epochs, positions % self.n)])


def train_iterator(split: Split, preprocess, batch_size: int, seed: int, rows=None):
  """An endless, checkpointable iterator of batches from a shuffled order of the split.

  `rows` are the rows of each global batch this host reads (all, by default); on
  several hosts they are the rows its devices hold, so that the global batch is the
  same as on one host (sharding.host_batch_rows).
  """
  order = _EpochOrder(len(split), seed)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)

  def load(step: int) -> dict:
    return preprocess(split.read(order(step * batch_size + rows)))

  ds = grain.MapDataset.range(2**62).map(load)  # element i is batch i: a prefix of forever
  # The prefetch thread only reads ahead; which rows a batch holds depends on its index alone.
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def eval_batches(split: Split, preprocess, batch_size: int, rows=None):
  """Yields every example once, in global batches padded at the end, with a 0/1 'mask'.

  `rows` as in train_iterator: this host's rows of each global batch.
  """
  n = len(split)
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  for start in range(0, n, batch_size):
    positions = start + rows
    batch = preprocess(split.read(np.minimum(positions, n - 1)))
    yield {**batch, 'mask': (positions < n).astype(np.int32)}
