"""`--dry_run`: compile the train step for the configured mesh, and report memory and FLOPs.

Nothing is trained or allocated beyond compilation: the state and batch are
abstract (shapes, dtypes and shardings). A text dataset that is not prepared here
is replaced by a placeholder of the configured shapes and vocabulary, since
compiling needs no text. Run it with simulated devices to learn whether a config
fits before getting the hardware:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bigjax.main \
      --config=experiments/digits_mlp.py --config.mesh.fsdp=8 --config.mesh.data=1 --dry_run

Simulated CPU devices have the CPU's compiler and float32 compute. --topology=v5e:4x4 compiles for
a TPU slice instead, with libtpu (requirements-tpu.txt) and no TPU, and adds the chip's HBM,
whether the step fits in it, the step's collectives and a roofline step time and MFU
(bigjax/topology.py). A step that does not fit is a result, not an error: "fits": false, exit 0.
"""

import math

import jax
from absl import logging

from bigjax import data, flops, sharding, topology, train
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


def report(config, topology_name: str = '') -> dict:
  devices = topology.devices(topology_name) if topology_name else None
  s = train.setup(config, dataset=_dataset(config), devices=devices)
  state = s.abstract_state
  out = {
      'devices': s.mesh.size,
      'mesh': dict(s.mesh.shape),
      'params': sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      'per_device_bytes': {'params': _per_device_bytes(state.params),
                           'opt_state': _per_device_bytes(state.opt_state)},
  }
  if topology_name:
    chip, _ = topology.parse(topology_name)
    out = {'topology': topology_name, 'device_kind': devices[0].device_kind, **out,
           'hbm_bytes': chip.hbm_bytes}
  try:
    with sharding.active(s.mesh, s.rules):
      _, compiled = train.compile_train_step(s, config)
  except jax.errors.JaxRuntimeError as e:
    too_big = topology.out_of_memory(str(e)) if topology_name else None
    if too_big is None:
      raise
    out['per_device_bytes']['temp'], out['usable_hbm_bytes'] = too_big  # the compiler's figures
    return {**out, 'fits': False}
  memory = compiled.memory_analysis()
  xla = flops.xla_flops(compiled, s.mesh.size)
  out['per_device_bytes'].update(
      temp=int(memory.temp_size_in_bytes),
      total=int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes))
  out.update(flops_per_step=xla, flops_per_device=xla / s.mesh.size)
  if topology_name:  # the TPU compiler refuses most programs that do not fit; this catches the rest
    out.update(fits=out['per_device_bytes']['total'] <= chip.hbm_bytes,
               **topology.estimate(chip, s.mesh.size, compiled, train.model_flops(s, config, xla)))
  return out
