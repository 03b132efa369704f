"""bigjax's side of the *_vs_pytorch.py benchmarks, without torch, so that CI can test it.

Bigjax is the train step as bigjax.train.train_and_evaluate builds it: train.setup, init, and
train.compile_train_step's step function, called as the trainer calls it."""

import time

import numpy as np


class Bigjax:
  """bigjax's own train step, built the way bigjax.train.train_and_evaluate builds it."""

  def __init__(self, config, dataset=None):
    """dataset: one already made (random images for the ViT benchmark), else the config's."""
    import jax  # noqa: PLC0415  (after the scripts' heap and thread settings)

    from bigjax import sharding, train  # noqa: PLC0415
    self.jax, self.sharding = jax, sharding
    start = time.perf_counter()
    self.s = train.setup(config, dataset=dataset)
    with self.active():
      self.state = self.s.init()
      self.step, _ = train.compile_train_step(self.s, config)  # the step the trainer calls
    self.compile_s = time.perf_counter() - start
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.batch_keys = set(train._example_batch(self.s.dataset))

  def active(self):
    return self.sharding.active(self.s.mesh, self.s.rules)

  def logits(self, batch: dict) -> np.ndarray:
    """Forward pass at the current weights (teacher-forced for a pair model), for the equivalence check."""
    apply = self.jax.jit(lambda params, batch: self.s.model.apply(
        {'params': params}, **self.s.task.model_inputs(batch), train=False))
    with self.active():
      return np.asarray(apply(self.state.params, batch))

  def run(self, batches) -> float:
    """Trains on the batches; returns the last step's loss."""
    with self.active():
      for batch in batches:
        self.state, metrics = self.step(self.state, self.sharding.shard_batch(batch, self.s.mesh))
      self.jax.block_until_ready((self.state, metrics))
    return float(metrics['loss'])
