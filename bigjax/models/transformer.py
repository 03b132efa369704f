"""Transformer blocks and a GPT-style decoder-only language model.

The blocks (Attention, Mlp, Block) are shared by every Transformer here: the
decoder LM below, and later the encoder classifier and encoder-decoder models.
Parameters are float32; compute runs in `dtype` (bfloat16 on accelerators).
Every parameter, and the residual stream, carries logical axis names
(`embed`, `heads`, `kv`, `mlp`, `vocab`, `layers`) that config.mesh.rules maps
to the mesh.

Decoding keeps a KV cache in the `cache` collection: call with decode=True on
a chunk of tokens (a whole prompt, then one token at a time) and the chunk is
written at the cache's current index. `valid` marks real tokens (False: left
padding), so prompts of different lengths decode in one batch.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax import cpu
from bigjax.cpu import fused as cpu_fused
from bigjax.models.attention import attention
from bigjax.models.layers import ACTIVATIONS, dense, masked_pool, token_dot_general, token_matmul

REMAT_POLICIES = {
    'none': None,  # no rematerialization: fastest, most memory
    'full': jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in backward
    'dots': jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the rest
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
}
NORMS = {'layernorm': nn.LayerNorm, 'rmsnorm': nn.RMSNorm}
MLPS = ('gelu', 'swiglu')
POSITIONS = ('rope', 'learned')


_XAVIER = nn.initializers.xavier_uniform()


def _init(axes, init=_XAVIER):
  return nn.with_logical_partitioning(init, axes)


def _norm(kind: str, dtype, name: str) -> nn.Module:
  return NORMS[kind](dtype=dtype, scale_init=_init(('embed',), nn.initializers.ones_init()), name=name,
                     **({'bias_init': _init(('embed',), nn.initializers.zeros_init())}
                        if kind == 'layernorm' else {}))


def rope(x, positions, base: float = 10000.0):
  """Rotary position embedding of x (B, T, heads, head_dim) at integer positions (B, T).

  The two halves of each head rotate together: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin),
  written as x * [cos, cos] + roll(x, half) * [-sin, sin] so XLA fuses it into one pass.
  """
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # (B, T, 1, half)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  cos, sin = jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([-sin, sin], axis=-1)
  x32 = x.astype(jnp.float32)
  return (x32 * cos + jnp.roll(x32, half, axis=-1) * sin).astype(x.dtype)


def attention_weights(q, k, valid, causal: bool):
  """The attention probabilities (B, heads, T, S) by the reference math: softmax over the keys of the
  scaled scores, masked as `attention` masks them. The fused kernels never materialize them."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # grouped-query: query head j reads key head j // group
  scores = jnp.einsum('bthd,bshd->bhts', q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
  mask = valid[:, None, None, :]
  if causal:
    mask &= jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
  return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1)


class Attention(nn.Module):
  """Multi-head (num_kv_heads == num_heads) or grouped-query attention."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: jnp.dtype
  use_rope: bool
  causal: bool = True
  decode: bool = False
  query_blocks: int = 1  # causal attention in this many query chunks (see attention.attention)
  implementation: str = 'auto'  # attention.IMPLEMENTATIONS
  block_size: int = 512  # splash attention's blocks

  @nn.compact
  def __call__(self, x, positions, valid):
    d_model = x.shape[-1]

    def weight(name, shape, axes, in_axis, out_axis):
      init = nn.initializers.xavier_uniform(in_axis=in_axis, out_axis=out_axis)
      return self.param(name, _init(axes, init), shape).astype(self.dtype)

    kernels = [weight(name, (d_model, heads, self.head_dim), ('embed', 'heads', 'kv'), 0, (1, 2))
               for name, heads in (('query', self.num_heads), ('key', self.num_kv_heads),
                                   ('value', self.num_kv_heads))]
    x = x.astype(self.dtype)
    # One matmul on CPU, for its oneDNN fusion; elsewhere three, since the fused layout groups the
    # query heads by key/value head, which costs resharding where mesh.tensor exceeds the kv heads.
    if cpu.fuse_qkv():
      q, k, v = cpu_fused.qkv_projection(x, *kernels)
    else:
      q, k, v = (token_matmul(x, w) for w in kernels)
    if self.use_rope:
      q, k = rope(q, positions), rope(k, positions)
    if self.decode:
      k, v, valid, first = self._cached(k, v, valid)
      out = attention(q, k, v, valid, causal=self.causal, first=first, implementation=self.implementation)
    else:
      out = attention(q, k, v, valid, causal=self.causal, blocks=self.query_blocks,
                      implementation=self.implementation, block_size=self.block_size)
      if self.is_mutable_collection('intermediates'):  # asked for (attention rollout): training never pays
        self.sow('intermediates', 'attention_weights', attention_weights(q, k, valid, self.causal))
    w = weight('out', (self.num_heads, self.head_dim, d_model), ('heads', 'kv', 'embed'), (0, 1), 2)
    return token_matmul(out.reshape(out.shape[:-2] + (-1,)), w.reshape(-1, d_model))

  def _cached(self, k, v, valid):
    """Writes this chunk's keys, values and validity at the cache index.

    Returns the whole cache (B, max_length, ...) to attend over, and the slot of
    the chunk's first token. init sizes the cache from the chunk it is given.
    """
    cached_k = self.variable('cache', 'key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'value', jnp.zeros, v.shape, v.dtype)
    cached_valid = self.variable('cache', 'valid', jnp.zeros, valid.shape, bool)
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    if self.is_initializing():
      return k, v, valid, 0
    first = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, first, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, first, 0, 0))
    cached_valid.value = jax.lax.dynamic_update_slice(cached_valid.value, valid, (0, first))
    index.value = first + k.shape[1]
    return cached_k.value, cached_v.value, cached_valid.value, first


class Mlp(nn.Module):
  hidden: int
  kind: str  # gelu | swiglu
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    linear = functools.partial(nn.Dense, dtype=self.dtype, use_bias=False, dot_general=token_dot_general)
    if self.kind == 'swiglu':
      # Gate and up in one matmul: one input-gradient dot in backward, which XLA:CPU's oneDNN
      # fusion can run (two summed cannot; bigjax/cpu/fused.py).
      # Interleaved per hidden unit, so the `mlp` axis, sharded over `tensor`, stays whole.
      kernels = [_Kernel((x.shape[-1], self.hidden), ('embed', 'mlp'), name=n)() for n in ('gate', 'up')]
      w = jnp.stack(kernels, axis=-1).astype(self.dtype)  # (embed, mlp, 2)
      gate, up = jnp.moveaxis(token_matmul(x.astype(self.dtype), w), -1, 0)
      h = nn.silu(gate) * up
    else:
      h = ACTIVATIONS['gelu'](linear(self.hidden, kernel_init=_init(('embed', 'mlp')), name='up')(x))
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    return linear(x.shape[-1], kernel_init=_init(('mlp', 'embed')), name='down')(h)


class _Kernel(nn.Module):
  """nn.Dense's `kernel` alone, for a layer that fuses several Dense layers into one matmul:
  the parameter tree stays nn.Dense's."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]

  @nn.compact
  def __call__(self):
    return self.param('kernel', _init(self.axes), self.shape)


class Block(nn.Module):
  """Pre-norm residual block: x + Attention(norm(x)), then x + Mlp(norm(x))."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_hidden: int
  mlp: str
  norm: str
  dropout: float
  dtype: jnp.dtype
  use_rope: bool
  causal: bool = True
  train: bool = False
  decode: bool = False
  query_blocks: int = 1
  attention: str = 'auto'
  attention_block: int = 512

  @nn.compact
  def __call__(self, x, positions, valid):
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    self_attention = Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.dtype, self.use_rope,
                               self.causal, self.decode, self.query_blocks, self.attention,
                               self.attention_block, name='attention')
    h = self_attention(_norm(self.norm, self.dtype, 'attention_norm')(x), positions, valid)
    x = x + drop(h)
    h = Mlp(self.mlp_hidden, self.mlp, self.dtype, name='mlp')(_norm(self.norm, self.dtype, 'mlp_norm')(x))
    x = x + drop(h)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class _ScanBlock(Block):
  """A Block with nn.scan's (carry, broadcast args) -> (carry, output) signature."""

  def __call__(self, x, positions, valid):
    return super().__call__(x, positions, valid), None


@functools.cache
def _scanned(block):
  """A Block-like module class with nn.scan's signature, as _ScanBlock is for Block."""
  class Scanned(block):
    def __call__(self, x, positions, valid):
      return super().__call__(x, positions, valid), None
  return Scanned


def run_layers(block_kwargs: dict, x, positions, valid, *, num_layers: int, scan: bool, remat: str,
               block=None):
  """num_layers Blocks over x, called from a model's compact __call__: one traced layer under nn.scan
  (compile time flat in depth; params, the KV cache and sown intermediates stacked over a `layers`
  axis) or unrolled as layer_0, layer_1, ...; either under the remat policy.
  block: a Block-like module class with the same (x, positions, valid) call (default: Block)."""
  block = block or Block
  if scan:
    block = _ScanBlock if block is Block else _scanned(block)
  if remat != 'none':
    block = nn.remat(block, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if scan:
    layers = nn.scan(block, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                     split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast, nn.broadcast),
                     length=num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    return layers(**block_kwargs, name='layers')(x, positions, valid)[0]
  for i in range(num_layers):
    x = block(**block_kwargs, name=f'layer_{i}')(x, positions, valid)
  return x


class TransformerLM(nn.Module):
  """A decoder-only language model: tokens (B, T) int -> next-token logits (B, T, vocab) float32."""
  num_outputs: int  # the vocabulary size, for inputs and outputs
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  num_kv_heads: int = 0  # 0: as many as num_heads (multi-head); fewer: grouped-query attention
  mlp_ratio: float = 4.0
  mlp: str = 'gelu'  # gelu | swiglu
  norm: str = 'layernorm'  # layernorm | rmsnorm
  positions: str = 'rope'  # rope | learned
  max_length: int = 1024  # learned positions only
  tied_embedding: bool = True
  dropout: float = 0.0
  query_blocks: int = 2  # causal attention in 2 query chunks: exact, a quarter fewer attention FLOPs
  attention: str = 'auto'  # attention.IMPLEMENTATIONS: auto is splash on TPU, cuDNN on GPU
  attention_block: int = 512  # splash attention's query and key blocks
  dtype: str = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  scan_layers: bool = True  # one traced layer, scanned: compile time flat in depth
  remat: str = 'none'  # a REMAT_POLICIES key

  @nn.compact
  def __call__(self, inputs, train: bool = False, positions=None, valid=None, decode: bool = False):
    tokens = inputs  # (B, T) ids
    dtype = jnp.dtype(self.dtype)
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embed = nn.Embed(self.num_outputs, self.d_model, dtype=dtype,
                     embedding_init=_init(('vocab', 'embed'), nn.initializers.normal(0.02)), name='embed')
    x = embed(tokens)
    if self.positions == 'learned':
      x += nn.Embed(self.max_length, self.d_model, dtype=dtype, name='position_embed',
                    embedding_init=_init((None, 'embed'), nn.initializers.normal(0.02)))(positions)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

    kwargs = dict(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads or self.num_heads,
                  head_dim=self.d_model // self.num_heads, mlp_hidden=int(self.mlp_ratio * self.d_model),
                  mlp=self.mlp, norm=self.norm, dropout=self.dropout, dtype=dtype,
                  use_rope=self.positions == 'rope', train=train, decode=decode,
                  query_blocks=self.query_blocks, attention=self.attention,
                  attention_block=self.attention_block)
    x = run_layers(kwargs, x, positions, valid, num_layers=self.num_layers, scan=self.scan_layers,
                   remat=self.remat)

    x = _norm(self.norm, dtype, 'final_norm')(x)
    if self.tied_embedding:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.num_outputs, dtype=dtype, use_bias=False, name='unembed',
                        kernel_init=_init(('embed', 'vocab')))(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


class TransformerClassifier(nn.Module):
  """A Transformer encoder: tokens (B, T), pad_id for padding -> class logits (B, num_outputs).

  The blocks are the decoder's, run without the causal mask. Padding is masked out of attention
  and out of the pooling, and positions count real tokens only, so padding (left or right) never
  changes a prediction.
  """
  num_outputs: int
  vocab_size: int = 0  # 0: the dataset tokenizer's (models.build fills it in)
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  mlp_ratio: float = 4.0
  mlp: str = 'gelu'  # gelu | swiglu
  norm: str = 'layernorm'  # layernorm | rmsnorm
  positions: str = 'learned'  # learned | rope
  max_length: int = 512  # learned positions only
  pooling: str = 'mean'  # mean | max, over real tokens
  dropout: float = 0.1
  attention: str = 'auto'  # attention.IMPLEMENTATIONS
  attention_block: int = 512
  dtype: str = 'float32'
  pad_id: int = 0

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    dtype, tokens = jnp.dtype(self.dtype), inputs
    valid = tokens != self.pad_id
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    x = nn.Embed(self.vocab_size, self.d_model, dtype=dtype, name='embed',
                 embedding_init=_init(('vocab', 'embed'), nn.initializers.normal(0.02)))(tokens)
    if self.positions == 'learned':
      x += nn.Embed(self.max_length, self.d_model, dtype=dtype, name='position_embed',
                    embedding_init=_init((None, 'embed'), nn.initializers.normal(0.02)))(positions)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i in range(self.num_layers):
      x = Block(self.num_heads, self.num_heads, self.d_model // self.num_heads,
                int(self.mlp_ratio * self.d_model), self.mlp, self.norm, self.dropout, dtype,
                self.positions == 'rope', causal=False, train=train, attention=self.attention,
                attention_block=self.attention_block, name=f'layer_{i}')(x, positions, valid)
    x = _norm(self.norm, dtype, 'final_norm')(x).astype(jnp.float32)
    pooled = masked_pool(x, valid, self.pooling)
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(pooled)
