"""Small building blocks shared by the model files: annotated layers, activations."""

import flax.linen as nn

ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': nn.tanh,
    'sigmoid': nn.sigmoid,
    'gelu': nn.gelu,
    'silu': nn.silu,
}


def dense(features: int, axes: tuple[str, str], name: str | None = None) -> nn.Dense:
  """A Dense layer whose kernel and bias carry logical axis names for sharding."""
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]),
      name=name)


def conv(features: int, kernel: int, strides: int = 1, use_bias: bool = True,
         name: str | None = None) -> nn.Conv:
  """A 2-D 'SAME' convolution; its kernel is (h, w, conv_in, conv_out)."""
  return nn.Conv(
      features, (kernel, kernel), strides=strides, padding='SAME', use_bias=use_bias,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
      name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm whose running statistics live in the `batch_stats` collection.

  Under jit with a sharded batch, the mean and variance are over the global
  batch, so statistics do not depend on how many devices share the batch.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('conv_out',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)),
      name=name)
