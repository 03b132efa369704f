"""Conformer-CTC (Gulati et al., 2020) speech recognizer, front end included.

inputs (B, S) int16 samples at 16 kHz, lengths (B,) int32 real samples
  -> log-mel features (B, T, n_mels) (bigjax.audio, inside the jitted model: the host moves only int16)
  -> normalization (per utterance, running per-bin statistics, or none), SpecAugment when training
  -> 4x subsampling: two 3x3 stride-2 convs over (time, mel) with ReLU, then a Dense to d_model
  -> encoder: Conformer blocks, or a bidirectional LSTM stack
  -> CTC head -> (logits (B, T', num_outputs) float32, valid (B, T') bool), T' = ceil(ceil(T / 2) / 2).

A Conformer block (pre-norm): x + FFN/2, x + self-attention with RoPE positions, x + convolution
module, x + FFN/2, then a LayerNorm. The attention and the FFNs are bigjax.models.transformer's
(Attention without the causal mask, Mlp); the layers go through its run_layers (scan, remat).
Differences from the paper: RoPE instead of Transformer-XL relative positions, no FFN biases, and
LayerNorm instead of BatchNorm in the convolution module (see ConvModule).

Padding never changes a real frame: padded frames are zeroed before every convolution, each stride-2
conv pads explicitly by one on both sides (so a window never depends on the padded length), and
attention masks padded keys. SIZES holds the named sizes; the constructor defaults are 'tiny'.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from bigjax import audio
from bigjax.config import ConfigError
from bigjax.cpu import depthwise
from bigjax.models.layers import dense, token_dot_general, token_matmul
from bigjax.models.lstm import LSTM
from bigjax.models.transformer import Attention, Mlp, _init, _norm, run_layers

NORMALIZATIONS = ('utterance', 'global', 'none')
ENCODERS = ('conformer', 'lstm')

# tiny: a 2-core CPU run; small: Conformer-S's shape (d_model 144, 16 layers, 4 heads, kernel 32).
SIZES = {
    'tiny': dict(d_model=144, num_layers=4, num_heads=4, conv_kernel=15, ffn_ratio=4.0,
                 subsample_channels=32),  # at 64 the subsampling convs cost more than the encoder
    'small': dict(d_model=144, num_layers=16, num_heads=4, conv_kernel=32, ffn_ratio=4.0,
                  subsample_channels=144),
}

_ZEROS = nn.initializers.zeros_init()
_LECUN = nn.initializers.lecun_normal()


def subsampled_lengths(lengths, times: int = 2):
  """Real frames after `times` stride-2 convs: ceil(n / 2) each."""
  for _ in range(times):
    lengths = (lengths + 1) // 2
  return lengths


def _mask(x, valid):
  return jnp.where(valid[..., None], x, 0).astype(x.dtype)


class StridedConv(nn.Module):
  """A 3x3 stride-2 conv padded by one on both sides: nn.Conv's parameters (kernel (3, 3, in, out),
  bias), computed as one matmul over the nine strided slices (im2col): XLA:CPU's own convolution, and
  its backward above all, runs this shape at a fraction of its matmul speed."""
  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _init((None, None, 'conv_in', 'conv_out'), _LECUN),
                        (3, 3, x.shape[-1], self.features))
    bias = self.param('bias', _init(('conv_out',), _ZEROS), (self.features,))
    t, m = -(-x.shape[1] // 2), -(-x.shape[2] // 2)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # (B, t, m, 9 * in), ordered as the kernel's (row, column, in)
    slices = [x[:, i:i + 2 * t - 1:2, j:j + 2 * m - 1:2] for i in range(3) for j in range(3)]
    patches = jnp.concatenate(slices, axis=-1)
    w = kernel.reshape(-1, self.features).astype(self.dtype)
    return token_matmul(patches, w) + bias.astype(self.dtype)


class Subsampling(nn.Module):
  """(B, T, n_mels) features -> (B, ceil(ceil(T/2)/2), features): two 3x3 stride-2 convs over
  (time, mel), each padded by one frame on both sides, with ReLU, then a Dense over (channel, mel)."""
  channels: int
  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, valid):
    x = x[..., None].astype(self.dtype)  # one input channel
    for i in range(2):
      x = _mask(x.reshape(x.shape[:2] + (-1,)), valid).reshape(x.shape)  # padding reads as zeros
      x = nn.relu(StridedConv(self.channels, self.dtype, name=f'conv_{i}')(x))
      valid = valid[:, ::2]  # frame j is real where its centre 2j was
    x = x.reshape(x.shape[:2] + (-1,))  # (B, T', mel' * channels), mel-major
    x = nn.Dense(self.features, dtype=self.dtype, dot_general=token_dot_general, name='project',
                 kernel_init=_init((None, 'embed')), bias_init=_init(('embed',), _ZEROS))(x)
    return _mask(x, valid), valid


class Depthwise(nn.Module):
  """nn.Conv's depthwise 'SAME' convolution over time (its parameters: kernel (K, 1, C), bias), computed
  by bigjax.cpu.depthwise: shifted multiply-adds on CPU, one grouped convolution elsewhere."""
  kernel: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param('kernel', _init((None, None, 'mlp'), _LECUN), (self.kernel, 1, c))
    bias = self.param('bias', _init(('mlp',), _ZEROS), (c,))
    return depthwise.conv1d(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class ConvModule(nn.Module):
  """LayerNorm -> pointwise Dense to 2d -> GLU -> depthwise conv over time -> LayerNorm -> swish ->
  pointwise Dense -> dropout.

  The paper's BatchNorm after the depthwise conv is a LayerNorm here: batch statistics would count
  padded frames unless masked, and under nn.scan each layer's running statistics would be one more
  stacked, mutable collection; a LayerNorm needs neither and normalizes each frame alone.
  """
  kernel: int
  dropout: float
  dtype: jnp.dtype
  train: bool = False

  @nn.compact
  def __call__(self, x, valid):
    d = x.shape[-1]
    linear = functools.partial(nn.Dense, dtype=self.dtype, dot_general=token_dot_general)
    h = _norm('layernorm', self.dtype, 'norm')(x)
    h = linear(2 * d, kernel_init=_init(('embed', 'mlp')), bias_init=_init(('mlp',), _ZEROS),
               name='pointwise_in')(h)
    h = _mask(nn.glu(h, axis=-1), valid)  # the conv must read padding as zeros
    h = Depthwise(self.kernel, self.dtype, name='depthwise')(h)
    h = nn.swish(_norm('layernorm', self.dtype, 'conv_norm')(h))
    h = linear(d, kernel_init=_init(('mlp', 'embed')), bias_init=_init(('embed',), _ZEROS),
               name='pointwise_out')(h)
    return nn.Dropout(self.dropout, deterministic=not self.train)(h)


class ConformerBlock(nn.Module):
  """x + FFN/2, x + MHSA (RoPE, not causal), x + ConvModule, x + FFN/2, LayerNorm; run_layers' call."""
  num_heads: int
  head_dim: int
  mlp_hidden: int
  mlp: str
  conv_kernel: int
  dropout: float
  dtype: jnp.dtype
  train: bool = False
  attention: str = 'auto'
  attention_block: int = 512

  @nn.compact
  def __call__(self, x, positions, valid):
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    norm = functools.partial(_norm, 'layernorm', self.dtype)
    x = x + 0.5 * drop(Mlp(self.mlp_hidden, self.mlp, self.dtype, name='ffn_in')(norm('ffn_in_norm')(x)))
    attention = Attention(self.num_heads, self.num_heads, self.head_dim, self.dtype, use_rope=True,
                          causal=False, implementation=self.attention, block_size=self.attention_block,
                          name='attention')
    x = x + drop(attention(norm('attention_norm')(x), positions, valid))
    x = x + ConvModule(self.conv_kernel, self.dropout, self.dtype, self.train, name='conv')(x, valid)
    x = x + 0.5 * drop(Mlp(self.mlp_hidden, self.mlp, self.dtype, name='ffn_out')(norm('ffn_out_norm')(x)))
    x = norm('final_norm')(x)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class ConformerCTC(nn.Module):
  """Speech recognizer: inputs (B, S) int16, lengths (B,) -> (logits (B, T', num_outputs), valid (B, T'))."""
  num_outputs: int  # characters or SentencePiece units, the CTC blank (id 0) included
  n_mels: int = 80
  normalize: str = 'utterance'  # NORMALIZATIONS
  spec_augment: bool = True  # training only
  freq_masks: int = 2
  freq_width: int = 27
  time_masks: int = 2
  time_width: float = 0.05  # the widest time mask, as a fraction of the utterance's frames
  subsample_channels: int = 32  # 0: d_model
  encoder: str = 'conformer'  # ENCODERS
  d_model: int = 144
  num_layers: int = 4
  num_heads: int = 4
  ffn_ratio: float = 4.0
  mlp: str = 'gelu'  # gelu | swiglu
  conv_kernel: int = 15
  lstm_layers: int = 2  # encoder='lstm': bidirectional layers
  lstm_hidden: int = 256  # per direction
  dropout: float = 0.1
  attention: str = 'auto'  # attention.IMPLEMENTATIONS
  attention_block: int = 512
  dtype: str = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  scan_layers: bool = True  # one traced layer, scanned: compile time flat in depth
  remat: str = 'none'  # a REMAT_POLICIES key

  def features(self, inputs, lengths, train: bool = False):
    """Normalized (and, training, SpecAugmented) log-mel features (B, T, n_mels) and their lengths."""
    x, frames = audio.log_mel(inputs, lengths, n_mels=self.n_mels)
    valid = jnp.arange(x.shape[1])[None] < frames[:, None]
    if self.normalize == 'utterance':
      x = audio.normalize_utterance(x, frames)
    elif self.normalize == 'global':  # running per-bin statistics over real frames (batch_stats)
      x = nn.BatchNorm(use_running_average=not train, use_scale=False, use_bias=False, axis_name=None,
                       name='global_norm')(x, mask=jnp.broadcast_to(valid[..., None], x.shape))
    if train and self.spec_augment:
      x = audio.spec_augment(self.make_rng('augment'), x, frames, freq_masks=self.freq_masks,
                             freq_width=self.freq_width, time_masks=self.time_masks,
                             time_width=self.time_width)
    return _mask(x, valid), valid

  @nn.compact
  def __call__(self, inputs, lengths, train: bool = False):
    if self.normalize not in NORMALIZATIONS or self.encoder not in ENCODERS:
      raise ConfigError(f'config.model.normalize={self.normalize!r} / encoder={self.encoder!r}: use one of '
                        f'{NORMALIZATIONS} / {ENCODERS}')
    if self.encoder == 'conformer' and self.d_model % self.num_heads:
      raise ConfigError(f'config.model.d_model={self.d_model} is invalid: use a multiple of num_heads')
    dtype = jnp.dtype(self.dtype)
    x, valid = self.features(inputs, lengths, train)
    x, valid = Subsampling(self.subsample_channels or self.d_model, self.d_model, dtype, name='subsample')(
        x, valid)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    x = nn.with_logical_constraint(drop(x), ('batch', 'length', 'embed'))
    if self.encoder == 'conformer':
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])  # padding is at the end
      kwargs = dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
                    mlp_hidden=int(self.ffn_ratio * self.d_model), mlp=self.mlp, conv_kernel=self.conv_kernel,
                    dropout=self.dropout, dtype=dtype, train=train, attention=self.attention,
                    attention_block=self.attention_block)
      x = run_layers(kwargs, x, positions, valid, num_layers=self.num_layers, scan=self.scan_layers,
                     remat=self.remat, block=ConformerBlock)
    else:
      x = x.astype(jnp.float32)
      for layer in range(self.lstm_layers):
        if layer:
          x = drop(x)
        x = jnp.concatenate([LSTM(self.lstm_hidden, reverse, name=f'lstm_{layer}_{direction}')(x, valid)[0]
                             for reverse, direction in ((False, 'forward'), (True, 'backward'))], axis=-1)
    logits = dense(self.num_outputs, ('embed', 'vocab'), name='head')(x.astype(jnp.float32))
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab')), valid
