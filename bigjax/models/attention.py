"""Attention: the one function every Transformer block calls, and the implementation it picks.

`attention` builds the mask (padding, causality, the slots of a KV cache) and hands q, k, v to the
implementation that model.attention names:

  auto    the platform's own: splash on TPU, cudnn on GPU, cpu on CPU
  xla     jax.nn.dot_product_attention's XLA path, which materializes the T x S scores; the
          reference every other path is tested against
  cudnn   cuDNN's fused flash attention (bf16/fp16 on an NVIDIA GPU)
  splash  Pallas's splash attention for TPU (interpreted on other platforms, for tests): blockwise,
          never materializing the scores, skipping the blocks a causal mask hides
  cpu     bigjax.cpu.attention's heads-major einsums, XLA:CPU's fastest layout

The fused kernels cover training and eval (one pass over whole sequences). Decoding with a KV
cache, and any shape or dtype a kernel does not take, runs the XLA path (with a logged warning
where a kernel was asked for).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from bigjax import sharding
from bigjax.cpu import attention as cpu_attention

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash', 'cpu')
AUTO = {'tpu': 'splash', 'gpu': 'cudnn', 'cuda': 'cudnn', 'rocm': 'cudnn', 'cpu': 'cpu'}
FUSED = ('splash', 'cudnn')


def resolve(implementation: str) -> str:
  """The implementation 'auto' stands for on the platform being compiled for."""
  return AUTO.get(sharding.platform(), 'xla') if implementation == 'auto' else implementation


def unfused(implementation: str) -> str:
  """What a decoding step runs: the fused kernels take whole sequences, not one cached token."""
  name = resolve(implementation)
  return 'xla' if name in FUSED else name


def attention(q, k, v, valid, *, causal: bool, first=0, blocks: int = 1, implementation: str = 'auto',
              block_size: int = 512):
  """Attention of q (B, T, heads, head_dim) over k, v (B, S, kv_heads, head_dim).

  Query i sits at key slot first + i and sees slot j if j is a real token (valid (B, S)) and,
  when causal, j <= first + i. With causal, first == 0 and blocks > 1, the queries are cut into
  `blocks` equal chunks and chunk c attends only to the keys up to its own end: the same
  numbers, but the fully masked upper-right blocks are never computed (two blocks: a quarter
  fewer attention FLOPs). The fused kernels skip those blocks themselves and ignore `blocks`.
  block_size: splash's query and key block (capped at the sequence lengths).
  """
  name = resolve(implementation)
  if name in FUSED and isinstance(first, int) and first == 0:
    fused = (_splash if name == 'splash' else _cudnn)(q, k, v, valid, causal=causal, block_size=block_size)
    if fused is not None:
      return fused
    name = 'xla'
  t = q.shape[1]
  if blocks > 1 and causal and first == 0 and t % blocks == 0 and k.shape[1] == t:
    size = t // blocks
    chunks = []
    for c in range(blocks):
      end = (c + 1) * size
      chunks.append(attention(q[:, c * size:end], k[:, :end], v[:, :end], valid[:, :end], causal=True,
                              first=c * size, implementation=name))
    return jnp.concatenate(chunks, axis=1)
  mask = valid[:, None, None, :]
  if causal:  # slots are in time order, so this is the causal mask
    mask &= (jnp.arange(k.shape[1])[None, :] <= first + jnp.arange(t)[:, None])[None, None]
  core = cpu_attention.heads_major_attention if name == 'cpu' else reference
  return core(q, k, v, mask=mask)


def reference(q, k, v, mask):
  """XLA's attention, on any platform."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='xla')


@functools.cache
def _warn_once(message: str) -> None:
  logging.warning('%s', message)


def _cudnn(q, k, v, valid, *, causal, block_size):
  """cuDNN's flash attention, or None (and a warning) where cuDNN does not take the inputs."""
  del block_size  # cuDNN picks its own tiles
  try:
    return jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :], is_causal=causal,
                                        implementation='cudnn')
  except (ValueError, NotImplementedError, RuntimeError) as e:  # dtype, head_dim, no GPU
    _warn_once(f'model.attention=cudnn cannot run {q.dtype} q {q.shape}, k {k.shape} here '
               f'({str(e).splitlines()[0]}); using XLA\'s attention')
    return None


def _splash(q, k, v, valid, *, causal, block_size):
  """Splash attention, or None (and a warning) for lengths its blocks cannot tile."""
  t, s = q.shape[1], k.shape[1]
  bq, bkv = min(block_size, t), min(block_size, s)
  if t % bq or s % bkv or bkv % 128 or bq % 8:
    _warn_once(f'model.attention=splash needs lengths that blocks of a multiple of 128 tile (query {t}, '
               f'key {s}, model.attention_block={block_size}); using XLA\'s attention')
    return None
  # Padding as segments: every query is in segment 1 and sees the real keys. An example without
  # any real key (a batch's filler) sees all of them: its output is undefined on every path, but
  # an empty softmax would make it NaN.
  real = valid | ~valid.any(axis=1, keepdims=True)
  segments = splash.SegmentIds(q=jnp.ones(q.shape[:2], jnp.int32), kv=real.astype(jnp.int32))
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                             block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  interpret = sharding.platform() != 'tpu'

  def local(q, k, v, segments):  # one device's examples and heads: (B, T, N, H) -> (B, T, N, H)
    heads = q.shape[2]
    mask = splash.CausalMask((t, s)) if causal else splash.FullMask((t, s))
    kernel = splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=blocks,
                                    head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = q.shape[-1] ** -0.5
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    out = jax.vmap(kernel)(heads_first(q * scale), heads_first(k), heads_first(v), segment_ids=segments)
    return heads_first(out)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.are_all_axes_manual:  # one device, or already inside shard_map
    return local(q, k, v, segments)
  # A Pallas kernel is one device's program: shard_map it over the batch and head axes.
  rules = nn.get_logical_axis_rules()
  batch, heads = (nn.logical_to_mesh_axes((name,), rules)[0] for name in ('batch', 'heads'))
  ways = lambda axes: math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
  if q.shape[0] % ways(batch):
    batch = None  # init's one-example batch
  n, kv, split = q.shape[2], k.shape[2], ways(heads)
  kv_heads = heads  # how the key/value heads are split: like the query heads, where they can be
  if n % split:
    heads = kv_heads = None
  elif kv % split:  # fewer key/value heads than devices along `heads`: each holds them all
    own = _with_own_kv_heads(local, heads, n // split, n // kv)
    local, heads, kv_heads = (own, heads, None) if own else (local, None, None)
  spec = lambda heads: PartitionSpec(batch, None, heads, None)
  seg = PartitionSpec(batch, None)
  in_specs = (spec(heads), spec(kv_heads), spec(kv_heads), splash.SegmentIds(seg, seg))
  return jax.shard_map(local, in_specs=in_specs, out_specs=spec(heads), check_vma=False)(q, k, v, segments)


def _with_own_kv_heads(local, axis, local_heads: int, group: int):
  """local, given all key/value heads, computing with those of this device's query heads only
  (query head j uses key/value head j // group); None where the heads do not line up. Without
  it, the query heads would be gathered onto every device of a tensor axis wider than the
  key/value heads (GQA)."""
  if not isinstance(axis, str) or (group % local_heads and local_heads % group):
    return None  # heads that do not line up with the devices: the caller gathers them instead

  def own(q, k, v, segments):
    count = max(1, local_heads // group)
    first = jax.lax.axis_index(axis) * local_heads // group
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, first, count, axis=2)
    return local(q, take(k), take(v), segments)
  return own
