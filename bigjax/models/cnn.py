"""Convolutional classifiers: LeNet-style, and a small ResNet with BatchNorm."""

from collections.abc import Sequence

import flax.linen as nn

from bigjax.models.layers import ACTIVATIONS, batch_norm, conv, dense


class LeNet(nn.Module):
  """Two conv + pool stages, then two dense layers (LeCun et al., 1998, in modern dress)."""
  num_outputs: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  activation: str = 'relu'
  dropout: float = 0.0

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    act, x = ACTIVATIONS[self.activation], inputs
    for i, f in enumerate(self.features):
      x = act(conv(f, 3, name=f'conv_{i}')(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    x = x.reshape(x.shape[0], -1)
    x = act(dense(self.hidden, ('embed', 'mlp'), name='hidden')(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return dense(self.num_outputs, ('mlp', 'classes'), name='head')(x)


class ResidualBlock(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = conv(self.features, 3, self.strides, use_bias=False, name='conv_1')(x)
    y = nn.relu(batch_norm(train, name='bn_1')(y))
    y = conv(self.features, 3, use_bias=False, name='conv_2')(y)
    y = batch_norm(train, name='bn_2')(y)
    if residual.shape != y.shape:  # projection shortcut when the shape changes
      residual = conv(self.features, 1, self.strides, use_bias=False, name='proj')(residual)
      residual = batch_norm(train, name='bn_proj')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """CIFAR-style ResNet (He et al., 2016): a 3x3 stem, then stages that halve the size."""
  num_outputs: int
  stage_sizes: Sequence[int] = (2, 2, 2)  # (2, 2, 2) is ResNet-14; (3, 3, 3) is ResNet-20
  width: int = 32

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    x = conv(self.width, 3, use_bias=False, name='stem')(inputs)
    x = nn.relu(batch_norm(train, name='bn_stem')(x))
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(self.width * 2**stage, strides, name=f'stage{stage}_block{block}')(x, train)
    x = x.mean(axis=(1, 2))
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(x)
