"""`--dry_run`: compile the train step for the configured mesh, and report memory and FLOPs.

Nothing is trained or allocated beyond compilation: the state and batch are
abstract (shapes, dtypes and shardings). A text or image dataset that is not prepared
here is replaced by a placeholder of the configured shapes (and vocabulary), since
compiling needs no data. Run it with simulated devices to learn whether a config
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


def _state_bytes(s: train.Setup) -> dict:
  return {'params': _per_device_bytes(s.abstract_state.params),
          'opt_state': _per_device_bytes(s.abstract_state.opt_state)}


def _dataset(config) -> data.Dataset:
  try:
    return data.load(config.data)
  except ConfigError:
    spec = data.DATASETS[config.data.name]
    if not (spec.text_feature or spec.image_shape or spec.speech):
      raise
    logging.warning('%s is not prepared here: compiling with a placeholder of the configured shapes.',
                    spec.tfds_name)
    return data.placeholder(config.data, rows=max(config.train.batch_size, 1))


def _compile(s: train.Setup, config):
  with sharding.active(s.mesh, s.rules):
    return train.compile_train_step(s, config)[1]


def _program(s: train.Setup, config, compiled, chip) -> dict:
  """What the compiled step holds and costs, per device; with a TPU chip, whether it fits and its
  collectives and roofline."""
  memory = compiled.memory_analysis()
  total = int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
              + memory.temp_size_in_bytes)
  xla = flops.xla_flops(compiled, s.mesh.size)
  out = {'per_device_bytes': {**_state_bytes(s), 'temp': int(memory.temp_size_in_bytes), 'total': total},
         'flops_per_step': xla, 'flops_per_device': xla / s.mesh.size}
  if chip:  # the TPU compiler refuses most programs that do not fit; this catches the rest
    out.update(fits=total <= chip.hbm_bytes,
               **topology.estimate(chip, s.mesh.size, compiled, train.model_flops(s, config, xla)))
  return out


def _with_accumulation(s: train.Setup, config, chip) -> dict | None:
  """The step with train.grad_accum doubled until it fits the chip (a batch's activations split
  into micro-batches), and that grad_accum; None if no split of the batch fits."""
  accum = config.train.grad_accum
  while s.batch_size % (sharding.batch_split(s.mesh) * accum * 2) == 0:
    accum *= 2
    logging.info('The step does not fit; compiling it with train.grad_accum=%d.', accum)
    smaller = config.copy_and_resolve_references()
    smaller.train.grad_accum = accum
    try:
      program = _program(s, smaller, _compile(s, smaller), chip)
    except jax.errors.JaxRuntimeError as e:
      if topology.out_of_memory(str(e)) is None:
        raise
      continue
    if program['fits']:
      return {'train.grad_accum': accum, **program}
  return None


def report(config, topology_name: str = '') -> dict:
  devices = topology.devices(topology_name) if topology_name else None
  chip = topology.parse(topology_name)[0] if topology_name else None
  s = train.setup(config, dataset=_dataset(config), devices=devices)
  out = {'devices': s.mesh.size, 'mesh': dict(s.mesh.shape),
         'params': sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params))}
  if chip:
    out = {'topology': topology_name, 'device_kind': devices[0].device_kind, **out,
           'hbm_bytes': chip.hbm_bytes}
  try:
    out.update(_program(s, config, _compile(s, config), chip))
  except jax.errors.JaxRuntimeError as e:
    too_big = topology.out_of_memory(str(e)) if chip else None
    if too_big is None:
      raise
    out['per_device_bytes'] = {**_state_bytes(s), 'temp': too_big[0]}  # the compiler's: there is no program
    out.update(usable_hbm_bytes=too_big[1], fits=False)
  if chip and not out['fits']:
    out['fits_with'] = _with_accumulation(s, config, chip)
  return out
