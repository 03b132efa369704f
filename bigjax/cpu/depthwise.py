"""A depthwise 1-D convolution over time (the Conformer's), as XLA:CPU runs it fastest.

XLA:CPU lowers a grouped convolution with one channel per group, forward and above all backward,
far below its elementwise speed; the same sum written as kernel-size shifted multiply-adds fuses
into a few loops (docs/performance.md has the figures). Elsewhere the convolution stays one
lax.conv, which accelerators run well. Both take nn.Conv's kernel (K, 1, C) and 'SAME' padding.
"""

import jax
import jax.numpy as jnp

from bigjax import sharding


def conv1d(x, kernel):
  """x (B, T, C), kernel (K, 1, C) -> (B, T, C): each channel convolved with its own kernel over time,
  'SAME' padded (as flax pads it: (K - 1) // 2 in front)."""
  k, before = kernel.shape[0], (kernel.shape[0] - 1) // 2
  if sharding.platform() != 'cpu':
    return jax.lax.conv_general_dilated(x, kernel, (1,), [(before, k - 1 - before)],
                                        dimension_numbers=('NWC', 'WIO', 'NWC'),
                                        feature_group_count=x.shape[-1])
  padded = jnp.pad(x, ((0, 0), (before, k - 1 - before), (0, 0)))
  t = x.shape[1]
  return sum(padded[:, i:i + t] * kernel[i, 0] for i in range(k))
