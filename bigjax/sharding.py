"""Device mesh, logical-axis rules, and the shardings of state and batches.

Models name the axes of their parameters logically (`embed`, `mlp`, `conv_out`,
...). `config.mesh.rules` maps those names to the mesh axes `data`, `fsdp` and
`tensor`, MaxText-style, so one model runs data-parallel, fully sharded or
tensor-parallel by changing only `config.mesh`. One device is a mesh of size 1.
"""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from bigjax.config import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # batches split over both: fsdp is data parallelism with sharded weights


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one -1 size takes what is left."""
  devices = jax.devices() if devices is None else devices
  sizes = [mesh_config[a] for a in MESH_AXES]
  shape = ', '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes))
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1:
    raise ConfigError(f'config.mesh ({shape}): at most one axis may be -1')
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f'config.mesh ({shape}) cannot fill {len(devices)} devices: '
                        f'{known} does not divide {len(devices)}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f'config.mesh ({shape}) needs {math.prod(sizes)} devices but there are '
                      f'{len(devices)}: make the sizes multiply to {len(devices)}, or use -1')
  # Auto axes: jit's in/out shardings and GSPMD decide layouts (shard_map
  # rejects the Explicit axes that jax.make_mesh would give by default).
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def _dims(spec: PartitionSpec, shape, mesh):
  """(size, the spec's entry, its mesh axis names, how many ways they split it) per dimension."""
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else (axes or ())
    yield dim, axes, names, math.prod(mesh.shape[n] for n in names)


def _fit_spec(spec: PartitionSpec, shape, mesh) -> PartitionSpec:
  """Replicates any dimension the mesh axes do not divide evenly (10 classes on 8 devices)."""
  return PartitionSpec(*(axes if dim % ways == 0 else None
                         for dim, axes, _, ways in _dims(spec, shape, mesh)))


def warn_replicated(boxed_params, mesh, rules) -> list[str]:
  """Logs a warning for each parameter that _fit_spec replicates along a dimension its rules
  would split (the memory and compute of that dimension are then not divided), and returns them:
  'params/head/kernel (256, 10): dim 1 (10) is not divisible by mesh axes tensor=4; replicated'.
  Called on the params only: optimizer state copies their shardings and would repeat each one."""
  lines = []
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  for path, leaf in leaves:
    if not isinstance(leaf, nn.LogicallyPartitioned):
      continue
    shape = tuple(leaf.value.shape)
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    dims = [f'dim {i} ({dim}) is not divisible by mesh axes '
            f'{" x ".join(f"{n}={mesh.shape[n]}" for n in names)}'
            for i, (dim, _, names, ways) in enumerate(_dims(spec, shape, mesh)) if dim % ways]
    if dims:
      name = '/'.join(str(getattr(key, 'key', getattr(key, 'name', key))) for key in path)
      lines.append(f'params/{name} {shape}: {"; ".join(dims)}; replicated')
      logging.warning('%s', lines[-1])
  return lines


def tree_shardings(abstract_tree, mesh, rules):
  """NamedShardings for a tree whose leaves may be boxed with logical axis names.

  Unboxed leaves (step counters, BatchNorm statistics) are replicated. The
  returned tree has the structure of the unboxed tree.
  """
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      spec = nn.logical_to_mesh_axes(leaf.names, rules)
      return NamedSharding(mesh, _fit_spec(spec, leaf.value.shape, mesh))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


@contextlib.contextmanager
def active(mesh, rules):
  """Makes `mesh` the current mesh and `rules` the logical-axis rules while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def platform() -> str:
  """The platform of the program being traced: the active mesh's devices' (a TPU slice's that
  --dry_run --topology compiles for on a CPU host), else jax's default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh) -> int:
  """How many ways a batch is split: the global batch size must be a multiple."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def host_batch_rows(mesh, batch_size: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold, in order.

  A process feeds exactly these rows to make_array_from_process_local_data, so a
  batch is the same global array whatever the number of processes.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  return np.unique(np.concatenate([np.arange(batch_size)[index[0]] for index in index_map.values()]))


def shard_batch(local_batch: dict, mesh) -> dict:
  """This host's numpy rows -> one global jax.Array per field, split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
