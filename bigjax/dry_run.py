"""`--dry_run`: compile the train step for the configured mesh, and report memory and FLOPs.

Nothing is trained or allocated beyond compilation: the state and batch are
abstract (shapes, dtypes and shardings). Run it with simulated devices to
learn whether a config fits before getting the hardware:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bigjax.main \
      --config=experiments/digits_mlp.py --config.mesh.fsdp=8 --config.mesh.data=1 --dry_run
"""

import math

import jax

from bigjax import sharding, train


def _per_device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(abstract_tree))


def report(config) -> dict:
  s = train.setup(config)
  with sharding.active(s.mesh, s.rules):
    example = s.dataset.preprocess(s.dataset.splits['train'].read([0]))
    batch_sharding = sharding.batch_sharding(s.mesh)
    batch = {k: jax.ShapeDtypeStruct((s.batch_size, *v.shape[1:]), v.dtype, sharding=batch_sharding)
             for k, v in example.items()}
    compiled = train.make_train_step(s, config).lower(s.abstract_state, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older JAX returns one dict per program
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
      # XLA costs the partitioned per-device program; the step is that on every device.
      'flops_per_step': float(cost.get('flops', 0.0)) * s.mesh.size,
      'flops_per_device': float(cost.get('flops', 0.0)),
  }
