"""TPU slices by name, and what a train step compiled for one will cost (--dry_run --topology).

  python -m bigjax.main --config=experiments/lm_gpt.py:1b --dry_run --topology=v5e:4x4 --config.mesh.fsdp=16

A name is GENERATION:CHIPS, as Cloud TPU's topology flag spells it: v5e:4x4 and v6e:8x8 (2D),
v4:2x2x4 and v5p:4x4x4 (3D). libtpu (requirements-tpu.txt) describes the slice on any machine,
and jax compiles the real train step for it ahead of time, with the TPU's compiler, memory model
and kernels; no TPU is used. The step time and MFU are a roofline estimate from the compiler's cost
analysis and the chip's peaks, not a measurement.
"""

import dataclasses
import math
import os
import re

from bigjax.config import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  libtpu: str  # the generation in libtpu's topology names
  accelerator: str  # Cloud TPU's accelerator type prefix; v4 and v5p count TensorCores, 2 a chip
  dims: int  # 2: v5e and v6e's 2D torus; 3: v4 and v5p's 3D one
  megacore: bool  # two TensorCores that jax sees as one device
  hbm_bytes: int
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bandwidth: float  # bytes/s
  ici_bandwidth: float  # bytes/s a chip sends over all its links together


# Cloud TPU's published per-chip figures.
CHIPS = {
    'v4': Chip('v4', 'v4', 3, True, 32 * GiB, 275e12, 1.2e12, 300e9),
    'v5e': Chip('v5e', 'v5litepod', 2, False, 16 * GiB, 197e12, 819e9, 200e9),
    'v5p': Chip('v5', 'v5p', 3, True, 95 * GiB, 459e12, 2.765e12, 600e9),
    'v6e': Chip('v6e', 'v6e', 2, False, 32 * GiB, 918e12, 1.64e12, 448e9),
}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')


def parse(name: str) -> tuple[Chip, tuple[int, ...]]:
  """(chip, bounds) for 'v5e:4x4'; ConfigError for anything else."""
  generation, _, shape = name.partition(':')
  chip = CHIPS.get(generation)
  bounds = tuple(int(b) for b in shape.split('x')) if re.fullmatch(r'\d+(x\d+)*', shape) else ()
  if chip is None or len(bounds) != chip.dims or min(bounds) < 1:
    example = {2: '4x4', 3: '2x2x4'}
    raise ConfigError(f'--topology={name!r} is not a TPU slice: use GENERATION:CHIPS, GENERATION one of '
                      f'{", ".join(f"{g} (e.g. {g}:{example[c.dims]})" for g, c in CHIPS.items())}')
  return chip, bounds


def devices(name: str) -> list:
  """The compile-only devices of the slice (one per chip; megacore chips are one device each)."""
  chip, bounds = parse(name)
  chips = math.prod(bounds)
  # libtpu reads these at load; off a TPU VM it would otherwise log that it cannot find them
  # and ask the GCE metadata server. Compiling needs no lock on a chip: dry runs may run side by side.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', f'{chip.accelerator}-{chips * (2 if chip.megacore else 1)}')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  try:
    import libtpu  # noqa: F401, PLC0415
    from jax.experimental import topologies  # noqa: PLC0415
  except ImportError as e:
    raise ConfigError(f'--topology needs libtpu ({e}): pip install -r requirements-tpu.txt') from e
  if chip.dims == 3:  # v4 and v5p: wraparound links once every dimension is a multiple of 4
    wrap = (all(b % 4 == 0 for b in bounds),) * 3
  else:  # v5e and v6e: only a full 16-chip dimension wraps
    wrap = tuple(b == 16 for b in bounds) + (False,)
  # Four chips a host (2x2), except a single-host 8-chip v5e or v6e (2x4).
  per_host = (2, 4, 1) if chip.dims == 2 and bounds == (2, 4) else (min(bounds[0], 2), min(bounds[1], 2), 1)
  try:
    description = topologies.get_topology_desc(
        platform='tpu', topology_name=f'{chip.libtpu}:{"x".join(map(str, bounds))}',
        chip_config_name='megacore' if chip.megacore else 'default',
        chips_per_host_bounds=per_host, num_slices=1, wrap=wrap)
  except Exception as e:  # libtpu's own message names what is wrong with the shape
    raise ConfigError(f'--topology={name!r}: libtpu cannot build it: {str(e).splitlines()[0]}') from e
  return list(description.devices)


def out_of_memory(message: str) -> tuple[int, int] | None:
  """(bytes asked for, bytes available) from the TPU compiler's error for a program that does not
  fit in HBM; None for any other error."""
  size = r'\(([\d.]+)([KMGT]?)\)'
  match = re.search(rf'RESOURCE_EXHAUSTED: .*?{size} exceeds available HBM {size}', message)
  if not match:
    return None
  scale = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
  return int(float(match[1]) * scale[match[2]]), int(float(match[3]) * scale[match[4]])


def _shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape such as 'bf16[8,128]{1,0}' or a tuple '(f32[4], s32[])'."""
  sizes = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2, 'bf16': 2, 'f16': 2,
           's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
  total = 0
  for dtype, dims in re.findall(r'(\w+)\[([\d,]*)\]', shape):
    total += sizes.get(dtype, 4) * math.prod(int(d) for d in dims.split(',') if d)
  return total


def _trip_count(while_line: str, condition: str) -> int:
  """A while loop's iterations: XLA's known_trip_count where it wrote one, else N from a condition
  `counter < N` on one constant (scanned layers; the TPU's windowed collective matmuls), else 1."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', while_line)
  if known:
    return int(known[1])
  constants = re.findall(r' constant\((\d+)\)', condition)
  return int(constants[0]) if len(constants) == 1 and 'direction=LT' in condition else 1


def collectives(hlo_text: str) -> dict:
  """{kind: {'count': n, 'bytes': b}} of a compiled per-device program: each collective's result
  bytes, counted as often as it runs (a while loop's body, such as scanned layers, as many times as
  its known trip count). An asynchronous pair counts once, at its -done."""
  computations = {}  # name -> its lines
  for block in re.split(r'\n(?=\S)', hlo_text):
    head = re.match(r'(?:ENTRY )?(%?[\w.-]+)', block)
    if head:
      computations[head[1].lstrip('%')] = block
  runs = {}  # while body -> (the computation holding the while, its trip count)
  for parent, block in computations.items():
    for line in block.splitlines():
      loop = re.search(r' while\(.*condition=%?([\w.-]+), body=%?([\w.-]+)', line)
      if loop:
        runs[loop[2]] = (parent, _trip_count(line, computations.get(loop[1], '')))

  def times(name, seen=()):
    if name not in runs or name in seen:
      return 1
    parent, trips = runs[name]
    return trips * times(parent, (*seen, name))

  found = {}
  pattern = re.compile(r'= (\([^=]*?\)|\S+) (' + '|'.join(COLLECTIVES) + r')(-done)?\(')
  for name, block in computations.items():
    for line in block.splitlines():
      match = pattern.search(line)
      if match and not line.lstrip().startswith('//'):
        entry = found.setdefault(match[2], {'count': 0, 'bytes': 0})
        entry['count'] += times(name)
        entry['bytes'] += times(name) * _shape_bytes(match[1])
  return found


def mosaic_kernels(hlo_text: str) -> int:
  """How many Mosaic (Pallas) kernels a compiled TPU program calls, such as splash attention's
  forward and backward."""
  return hlo_text.count('custom_call_target="tpu_custom_call"')


def estimate(chip: Chip, devices: int, compiled, model_flops: float) -> dict:
  """A roofline: the step takes at least as long as the slowest of the chip's FLOPs at its peak, its
  HBM traffic and its collectives' bytes over ICI, so the MFU is at most what that time gives.

  XLA's cost analysis counts a loop's body once (scanned layers; the TPU's windowed collective
  matmuls), so the FLOPs are the larger of its count and the model's (flops.py, which leaves out
  rematerialization), and its bytes accessed are a lower bound. compiled: the per-device program;
  model_flops: the whole step's."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  traffic = collectives(compiled.as_text())
  seconds = {
      'compute': max(float(cost.get('flops', 0.0)), model_flops / devices) / chip.peak_flops,
      'hbm': float(cost.get('bytes accessed', 0.0)) / chip.hbm_bandwidth,
      'ici': sum(c['bytes'] for c in traffic.values()) / chip.ici_bandwidth,
  }
  step = max(seconds.values())
  return {
      'collectives': traffic,
      'mosaic_kernels': mosaic_kernels(compiled.as_text()),
      'roofline_s': {k: round(v, 6) for k, v in seconds.items()},
      'step_s_at_least': round(step, 6),
      'mfu_at_most': round(model_flops / (step * chip.peak_flops * devices), 4) if step else 0.0,
  }
