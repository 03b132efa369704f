"""Vision Transformer (Dosovitskiy et al., 2021): images cut into patches, a Transformer encoder.

images (B, H, W, C) float32 -> patches of patch_size x patch_size, each projected to d_model ->
(a class token in front) + positions -> the encoder blocks of bigjax.models.transformer (the LM's
and the text classifier's Block, not causal, no RoPE) -> final norm -> the class token's state or
the mean over patches -> class logits (B, num_outputs) float32.

The named sizes of the paper (and big_vision) are in SIZES; experiment configs copy one into
config.model, and the model itself takes plain fields. Differences from the paper's model: the
blocks' projections have no biases (those of bigjax's Transformer; under 0.2% of the parameters),
the class token has no position of its own (big_vision's layout), and GELU is the tanh
approximation (flax's default). On TPU, splash attention needs lengths that blocks of a multiple of
128 tile: 196 or 197 tokens (224 x 224, patch 16) run XLA's attention instead, with a warning.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bigjax.config import ConfigError
from bigjax.cpu import pool
from bigjax.models.layers import dense, token_matmul
from bigjax.models.transformer import _init, _norm, run_layers

CLASSIFIERS = ('token', 'gap')  # the class token's final state | the mean of the patches' states
POSITIONS = ('learned', 'sincos2d')  # a learned table per patch | fixed 2-D sin-cos (not trained)

# (patch_size, d_model, num_layers, num_heads, mlp_ratio) of the paper's Table 1 (Ti and S: DeiT's,
# as big_vision names them). ViT-B/16 at 224 x 224 with 1,000 classes: 86.5M parameters here, the
# paper's 86.6M less the differences above.
SIZES = {
    'Ti/16': {'patch_size': 16, 'd_model': 192, 'num_layers': 12, 'num_heads': 3, 'mlp_ratio': 4.0},
    'S/16': {'patch_size': 16, 'd_model': 384, 'num_layers': 12, 'num_heads': 6, 'mlp_ratio': 4.0},
    'B/16': {'patch_size': 16, 'd_model': 768, 'num_layers': 12, 'num_heads': 12, 'mlp_ratio': 4.0},
    'L/16': {'patch_size': 16, 'd_model': 1024, 'num_layers': 24, 'num_heads': 16, 'mlp_ratio': 4.0},
}


def patches(images, size: int):
  """(B, H, W, C) -> (B, H/size * W/size, size * size * C): row-major patches, each flattened in
  (row, column, channel) order, so that a conv kernel (size, size, C, D) reshaped to (-1, D)
  projects them: the same numbers as a conv with kernel = stride = size, as one plain matmul."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // size) * (w // size), size * size * c)


def sincos2d(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos positions (1, rows * cols, width), big_vision's posemb_sincos_2d: a quarter
  of the channels each for sin and cos of the column, then of the row."""
  y, x = np.mgrid[:rows, :cols]
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  y, x = np.outer(y.ravel(), omega), np.outer(x.ravel(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(np.float32)


class PatchEmbedding(nn.Module):
  """Each patch projected to d_model: nn.Conv's parameters (kernel (p, p, C, D), bias), as in
  big_vision, computed as one matmul over the flattened patches (no im2col on CPU; the same
  GEMM elsewhere)."""
  patch_size: int
  features: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, images):
    p, c = self.patch_size, images.shape[-1]
    kernel = self.param('kernel', _init((None, None, None, 'embed'), nn.initializers.lecun_normal()),
                        (p, p, c, self.features))
    bias = self.param('bias', _init(('embed',), nn.initializers.zeros_init()), (self.features,))
    w = kernel.reshape(-1, self.features).astype(self.dtype)
    return token_matmul(patches(images.astype(self.dtype), p), w) + bias.astype(self.dtype)


class ViT(nn.Module):
  """A Vision Transformer classifier: images (B, H, W, C) -> class logits (B, num_outputs) float32."""
  num_outputs: int
  patch_size: int = 16
  d_model: int = 384
  num_layers: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  mlp: str = 'gelu'  # gelu | swiglu
  norm: str = 'layernorm'  # layernorm | rmsnorm
  classifier: str = 'token'  # CLASSIFIERS
  positions: str = 'learned'  # POSITIONS
  dropout: float = 0.0
  attention: str = 'auto'  # attention.IMPLEMENTATIONS
  attention_block: int = 512
  dtype: str = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  scan_layers: bool = True  # one traced layer, scanned: compile time flat in depth
  remat: str = 'none'  # a REMAT_POLICIES key

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    dtype, p = jnp.dtype(self.dtype), self.patch_size
    b, h, w, _ = inputs.shape
    if h % p or w % p:
      raise ConfigError(f'config.model.patch_size={p} is invalid: use a divisor of the image size {h}x{w}')
    if self.positions == 'sincos2d' and self.d_model % 4:
      raise ConfigError(f'config.model.d_model={self.d_model} is invalid: sincos2d positions need a '
                        'multiple of 4')
    x = PatchEmbedding(p, self.d_model, dtype, name='embedding')(inputs)
    if self.positions == 'learned':
      init = nn.initializers.normal(self.d_model ** -0.5)  # big_vision's
      table = self.param('position_embed', _init((None, None, 'embed'), init), (1, x.shape[1], self.d_model))
    else:
      table = sincos2d(h // p, w // p, self.d_model)
    x = x + table.astype(dtype)
    if self.classifier == 'token':  # in front, after the positions: it has none
      token = self.param('class_token', _init((None, None, 'embed'), nn.initializers.zeros_init()),
                         (1, 1, self.d_model))
      x = jnp.concatenate([jnp.broadcast_to(token.astype(dtype), (b, 1, self.d_model)), x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

    valid = jnp.ones(x.shape[:2], bool)  # every token is real: no padding in an image
    positions = jnp.zeros(x.shape[:2], jnp.int32)  # unused without RoPE
    kwargs = dict(num_heads=self.num_heads, num_kv_heads=self.num_heads,
                  head_dim=self.d_model // self.num_heads, mlp_hidden=int(self.mlp_ratio * self.d_model),
                  mlp=self.mlp, norm=self.norm,
                  dropout=self.dropout, dtype=dtype, use_rope=False, causal=False, train=train,
                  attention=self.attention, attention_block=self.attention_block)
    x = run_layers(kwargs, x, positions, valid, num_layers=self.num_layers, scan=self.scan_layers,
                   remat=self.remat)

    x = _norm(self.norm, dtype, 'final_norm')(x).astype(jnp.float32)
    pooled = x[:, 0] if self.classifier == 'token' else pool.mean(x, axis=1)
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(pooled)
