"""`--dry_run`: compile the train step for the configured mesh, and report memory and FLOPs.

Nothing is trained or allocated beyond compilation: the state and batch are
abstract (shapes, dtypes and shardings). A text dataset that is not prepared here
is replaced by a placeholder of the configured shapes and vocabulary, since
compiling needs no text. Run it with simulated devices to learn whether a config
fits before getting the hardware:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bigjax.main \
      --config=experiments/digits_mlp.py --config.mesh.fsdp=8 --config.mesh.data=1 --dry_run
"""

import math

import jax
from absl import logging

from bigjax import data, flops, sharding, train
from bigjax.config import ConfigError


def _per_device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(abstract_tree))


def _dataset(config) -> data.Dataset:
  try:
    return data.load(config.data)
  except ConfigError as e:
    if not data.DATASETS[config.data.name].text_feature:
      raise
    logging.warning('%s; compiling with a placeholder of the configured shapes instead.',
                    str(e).split(':')[0])
    return data.placeholder(config.data, rows=max(config.train.batch_size, 1))


def report(config) -> dict:
  s = train.setup(config, dataset=_dataset(config))
  with sharding.active(s.mesh, s.rules):
    _, compiled = train.compile_train_step(s, config)
  memory = compiled.memory_analysis()
  state = s.abstract_state
  return {
      'devices': s.mesh.size,
      'mesh': dict(s.mesh.shape),
      'params': sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      'per_device_bytes': {
          'params': _per_device_bytes(state.params),
          'opt_state': _per_device_bytes(state.opt_state),
          'temp': int(memory.temp_size_in_bytes),
          'total': int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                       - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      },
      'flops_per_step': flops.xla_flops(compiled),
      'flops_per_device': flops.xla_flops(compiled) / s.mesh.size,
  }
