"""The grain input pipeline over random-access splits.

Train: one global shuffle from the seed (a new order every epoch); host h of P
takes positions h, h+P, h+2P, ... of each global batch of that order, so the
global batch is the same set of rows whatever the number of hosts. Element i of
the grain dataset is batch i, read in one call, which keeps per-row Python off
the hot path. The iterator is grain's, checkpointed with the model, so a
resumed run sees exactly the batches an uninterrupted run would have seen.

Eval: every example exactly once, padded to whole batches; padding rows carry
mask 0 so they count for nothing.
"""

import math

import grain
import jax
import numpy as np


def _stack(rows: list[dict]) -> dict:
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class Split:
  """One split: len(split), and split.read(indices) -> a dict of stacked numpy arrays.

  in_memory reads the whole split once, for datasets that fit in host memory;
  otherwise each read goes to the source (tfds.data_source: ArrayRecord files).
  """

  def __init__(self, source, in_memory: bool):
    self.source = source
    self.arrays = _stack([source[i] for i in range(len(source))]) if in_memory else None

  def __len__(self) -> int:
    return len(self.source)

  def read(self, indices) -> dict:
    indices = np.asarray(indices)
    if self.arrays is not None:
      return {k: v[indices] for k, v in self.arrays.items()}
    return _stack([self.source[int(i)] for i in indices])


def _host_rows(batch_size: int) -> int:
  if batch_size % jax.process_count():
    raise ValueError(f'batch size {batch_size} is not a multiple of {jax.process_count()} hosts')
  return batch_size // jax.process_count()


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


def train_iterator(split: Split, preprocess, batch_size: int, seed: int):
  """An endless, checkpointable iterator of this host's share of each global batch."""
  order = _EpochOrder(len(split), seed)
  # Host h of P takes positions h, h+P, ... of each global batch of the endless shuffled order.
  mine = np.arange(jax.process_index(), batch_size, jax.process_count())
  _host_rows(batch_size)  # checks the split is even

  def load(step: int) -> dict:
    return preprocess(split.read(order(step * batch_size + mine)))

  ds = grain.MapDataset.range(2**62).map(load)  # element i is batch i: a prefix of forever
  # The prefetch thread only reads ahead; which rows a batch holds depends on its index alone.
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def eval_batches(split: Split, preprocess, batch_size: int):
  """Yields this host's share of each padded global batch, with a 0/1 'mask'."""
  n = len(split)
  positions = np.arange(math.ceil(n / batch_size) * batch_size)
  rows = _host_rows(batch_size)
  mine = positions[jax.process_index()::jax.process_count()]
  for start in range(0, len(mine), rows):
    chunk = mine[start:start + rows]
    batch = preprocess(split.read(np.minimum(chunk, n - 1)))
    yield {**batch, 'mask': (chunk < n).astype(np.int32)}
