"""Convolutional classifiers: LeNet-style, and ResNets with BatchNorm (CIFAR-style to ResNet-50)."""

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
  """The basic block: two 3x3 convs (the first strided), for ResNet-18/34 and the CIFAR ResNets."""
  features: int
  strides: int
  zero_init: bool = False  # the last BatchNorm's scale starts at 0: the block starts as its shortcut

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = conv(self.features, 3, self.strides, use_bias=False, name='conv_1')(x)
    y = nn.relu(batch_norm(train, name='bn_1')(y))
    y = conv(self.features, 3, use_bias=False, name='conv_2')(y)
    y = batch_norm(train, name='bn_2', zero_scale=self.zero_init)(y)
    if residual.shape != y.shape:  # projection shortcut when the shape changes
      residual = conv(self.features, 1, self.strides, use_bias=False, name='proj')(residual)
      residual = batch_norm(train, name='bn_proj')(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """The bottleneck block of ResNet-50/101/152: 1x1 down to `features`, 3x3 (strided: the "v1.5"
  placement of torchvision and big_vision), 1x1 up to 4 x features."""
  features: int
  strides: int
  zero_init: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = nn.relu(batch_norm(train, name='bn_1')(conv(self.features, 1, use_bias=False, name='conv_1')(x)))
    y = conv(self.features, 3, self.strides, use_bias=False, name='conv_2')(y)
    y = nn.relu(batch_norm(train, name='bn_2')(y))
    y = conv(4 * self.features, 1, use_bias=False, name='conv_3')(y)
    y = batch_norm(train, name='bn_3', zero_scale=self.zero_init)(y)
    if residual.shape != y.shape:  # projection shortcut when the shape changes
      residual = conv(4 * self.features, 1, self.strides, use_bias=False, name='proj')(residual)
      residual = batch_norm(train, name='bn_proj')(residual)
    return nn.relu(y + residual)


BLOCKS = {'basic': ResidualBlock, 'bottleneck': BottleneckBlock}
STEMS = ('cifar', 'imagenet')


class ResNet(nn.Module):
  """ResNet (He et al., 2016): a stem, then stages that halve the size and double the width.

  The defaults are the CIFAR variant (3x3 stem, basic blocks). ResNet-50 is stage_sizes=(3, 4, 6, 3),
  width=64, block='bottleneck', stem='imagenet' (7x7/2 conv, 3x3/2 max pool): 25.6M parameters at
  1,000 classes.
  """
  num_outputs: int
  stage_sizes: Sequence[int] = (2, 2, 2)  # (2, 2, 2) is ResNet-14; (3, 3, 3) is ResNet-20
  width: int = 32
  stem: str = 'cifar'  # STEMS: cifar (3x3 conv) | imagenet (7x7/2 conv, 3x3/2 max pool)
  block: str = 'basic'  # BLOCKS
  # Each block's last BatchNorm scale starts at 0 (Goyal et al., 2017), so a fresh block is its
  # shortcut. None: for bottleneck blocks only (the basic blocks keep their original init).
  zero_init_residual: bool | None = None

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    if self.stem == 'imagenet':
      x = conv(self.width, 7, 2, use_bias=False, name='stem')(inputs)
      x = nn.relu(batch_norm(train, name='bn_stem')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    else:
      x = conv(self.width, 3, use_bias=False, name='stem')(inputs)
      x = nn.relu(batch_norm(train, name='bn_stem')(x))
    zero_init = self.block == 'bottleneck' if self.zero_init_residual is None else self.zero_init_residual
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BLOCKS[self.block](self.width * 2**stage, strides, zero_init,
                               name=f'stage{stage}_block{block}')(x, train)
    x = x.mean(axis=(1, 2))
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(x)
