"""How a train step's gradient is gathered: over micro-batches (train.grad_accum) and, with
parallel.mode=shard_map, over devices by hand. Both wrap

  grads_and_metrics(params, model_state, batch, rngs, frozen) -> (grads, metrics, new model_state)

where `frozen` is what the step reads but never trains (a distillation teacher's variables).
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from bigjax import sharding


def fold_rngs(rngs: dict, data) -> dict:
  return {name: jax.random.fold_in(key, data) for name, key in rngs.items()}


def accumulate(grads_and_metrics, steps: int):
  """The gradient from `steps` micro-batches, one after another (lax.scan), with the activation
  memory of a batch / steps: the mean of equal-size means. That equals the whole batch's gradient
  (up to float summation order) only for models without batch-dependent layers and without
  dropout: BatchNorm normalizes each micro-batch by its own statistics (and its running
  statistics are updated once per micro-batch), and each micro-batch draws other dropout masks.

  Micro-batch i holds rows i, i + steps, ... so each one is spread over every device.
  """
  def accumulated(params, model_state, batch, rngs, frozen):
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def one(carry, inputs):
      grads, metrics, model_state = carry
      i, micro_batch = inputs
      g, m, model_state = grads_and_metrics(params, model_state, micro_batch, fold_rngs(rngs, i), frozen)
      return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, metrics, m), model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda: grads_and_metrics(params, model_state, first, rngs, frozen)[1])
    init = (zeros, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes), model_state)
    (grads, metrics, model_state), _ = jax.lax.scan(one, init, (jnp.arange(steps), micro))
    return (jax.tree.map(lambda g: g / steps, grads), jax.tree.map(lambda m: m / steps, metrics),
            model_state)
  return accumulated


def data_parallel(grads_and_metrics, mesh):
  """The same computation as explicit data parallelism: each device takes its slice of
  the batch, computes loss and gradients alone, then one pmean averages them.

  Equal to the automatic (GSPMD) path up to float summation order. BatchNorm
  statistics become averages of per-device statistics, and each device draws its
  own dropout mask.
  """
  axes = sharding.BATCH_AXES

  def local(params, model_state, batch, rngs, frozen):
    rngs = fold_rngs(rngs, jax.lax.axis_index(axes))
    return jax.lax.pmean(grads_and_metrics(params, model_state, batch, rngs, frozen), axes)

  replicated, split = PartitionSpec(), PartitionSpec(axes)
  return jax.shard_map(local, mesh=mesh, in_specs=(replicated, replicated, split, replicated, replicated),
                       out_specs=replicated, check_vma=False)
