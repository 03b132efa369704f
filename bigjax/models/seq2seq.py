"""An encoder-decoder Transformer (Vaswani et al. 2017, pre-norm) for translation and summarization.

The encoder is the classifier's stack of bidirectional blocks; the decoder is the LM's stack of
causal blocks with cross-attention to the encoder's output between self-attention and the MLP.
Source and target share one vocabulary (one SentencePiece model), and by default one embedding,
which also produces the output logits.

With pointer=True the output is a pointer-generator's (See et al. 2017): a learned gate mixes the
vocabulary softmax with an attention distribution over the source tokens, so a rare word of the
source (a package name, a library) can be emitted by pointing at it. The model then returns the
mixture's log-probabilities, which every consumer of logits (log_softmax, cross-entropy, argmax,
beam search) treats exactly as logits.

One module, three calls:
  model.apply(v, inputs, targets)                      teacher forcing: logits (B, T, vocab)
  memory = model.apply(v, inputs, method=model.encode) the encoder's output, and every decoder
      layer's cross-attention keys and values, computed once per source
  model.apply(v, None, tokens, memory=memory, decode=True, positions=p, mutable=['cache'])
      one decoding step over the self-attention KV cache (bigjax/decode.py drives it)
`inputs` are source ids padded with pad_id at the end; `targets` the decoder's input ids
(BOS, then the target shifted right).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax import cpu
from bigjax.cpu import fused as cpu_fused
from bigjax.models.attention import attention, unfused
from bigjax.models.layers import token_matmul
from bigjax.models.transformer import REMAT_POLICIES, Attention, Block, Mlp, _init, _Kernel, _norm


class CrossAttention(nn.Module):
  """Queries from the decoder; keys and values precomputed from the encoder output (MemoryKV)."""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype
  implementation: str = 'auto'  # attention.IMPLEMENTATIONS
  block_size: int = 512

  @nn.compact
  def __call__(self, x, key, value, memory_valid):
    d_model = x.shape[-1]
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    w = self.param('query', _init(('embed', 'heads', 'kv'), init), (d_model, self.num_heads, self.head_dim))
    q = token_matmul(x.astype(self.dtype), w.astype(self.dtype))
    out = attention(q, key, value, memory_valid, causal=False, implementation=self.implementation,
                    block_size=self.block_size)
    init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    w = self.param('out', _init(('heads', 'kv', 'embed'), init), (self.num_heads, self.head_dim, d_model))
    return token_matmul(out.reshape(out.shape[:-2] + (-1,)), w.reshape(-1, d_model).astype(self.dtype))


class MemoryKV(nn.Module):
  """One decoder layer's cross-attention keys and values of the encoder output: computed once
  per source, outside the decoder, so that decoding never projects the memory again.
  project=False: the key and value kernels alone, for every layer's to be computed in one matmul
  (cpu.fuse_qkv(): bigjax/cpu/fused.py); the parameters are the same either way."""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype
  project: bool = True

  @nn.compact
  def __call__(self, memory):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    shape = (memory.shape[-1], self.num_heads, self.head_dim)
    kernels = tuple(self.param(name, _init(('embed', 'heads', 'kv'), init), shape).astype(self.dtype)
                    for name in ('key', 'value'))
    if not self.project:
      return kernels
    return tuple(token_matmul(memory, w) for w in kernels)


class Copy(nn.Module):
  """Pointer-generator output: log(gate * softmax(x @ unembed) + (1 - gate) * copy), where copy
  puts each source position's attention weight (heads averaged) on that position's token id.
  Attends over the last decoder layer's cross-attention keys, so decoding needs nothing new per
  step. On CPU the logits, queries and gate are one matmul (bigjax/cpu/fused.py: three that read
  x would have summed input gradients, which XLA:CPU's oneDNN fusion cannot run)."""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, unembed, key, memory_valid, source):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    shape = (x.shape[-1], self.num_heads, self.head_dim)
    query = self.param('query', _init(('embed', 'heads', 'kv'), init), shape)
    gate = _Kernel((x.shape[-1], 1), ('embed', None), name='gate')()
    kernels = [w.astype(self.dtype) for w in (unembed, query, gate)]
    x = x.astype(self.dtype)
    if cpu.fuse_qkv():
      logits, q, gate = cpu_fused.matmuls(x, *kernels)
    else:
      logits, q, gate = (token_matmul(x, w) for w in kernels)
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
    bias = self.param('gate_bias', _init((None,), nn.initializers.zeros_init()), (1,))
    gate = jax.nn.sigmoid(gate.astype(jnp.float32) + bias)
    scores = jnp.einsum('bthd,bshd->bhts', q, key, preferred_element_type=jnp.float32) * self.head_dim ** -0.5
    scores = jnp.where(memory_valid[:, None, None, :], scores, -1e30)
    weights = jax.nn.softmax(scores, axis=-1).mean(axis=1)  # (B, T, S)
    # Scattered onto the vocabulary (a one-hot matmul would hold a (B, S, vocab) array).
    scatter = lambda w, ids: jnp.zeros(w.shape[:1] + logits.shape[-1:]).at[:, ids].add(w)  # noqa: E731
    copy = jax.vmap(scatter)(weights, source)
    probs = gate * jax.nn.softmax(logits, axis=-1) + (1 - gate) * copy
    return jnp.log(probs + 1e-9)  # the floor keeps log finite where neither side has mass


class DecoderBlock(nn.Module):
  """x + SelfAttention(norm(x)) (causal, cached when decoding), x + CrossAttention(norm(x)),
  x + Mlp(norm(x))."""
  num_heads: int
  head_dim: int
  mlp_hidden: int
  mlp: str
  norm: str
  dropout: float
  dtype: jnp.dtype
  use_rope: bool
  train: bool = False
  decode: bool = False
  attention: str = 'auto'
  attention_block: int = 512

  @nn.compact
  def __call__(self, x, positions, key, value, memory_valid):
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    valid = jnp.ones(x.shape[:2], bool)  # targets are padded at the end: causality hides the padding
    self_attention = Attention(self.num_heads, self.num_heads, self.head_dim, self.dtype, self.use_rope,
                               causal=True, decode=self.decode, implementation=self.attention,
                               block_size=self.attention_block, name='attention')
    x = x + drop(self_attention(_norm(self.norm, self.dtype, 'attention_norm')(x), positions, valid))
    cross = CrossAttention(self.num_heads, self.head_dim, self.dtype, name='cross_attention',
                           implementation=unfused(self.attention) if self.decode else self.attention,
                           block_size=self.attention_block)
    x = x + drop(cross(_norm(self.norm, self.dtype, 'cross_norm')(x), key, value, memory_valid))
    h = Mlp(self.mlp_hidden, self.mlp, self.dtype, name='mlp')(_norm(self.norm, self.dtype, 'mlp_norm')(x))
    x = x + drop(h)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class _ScanEncoderBlock(Block):
  def __call__(self, x, positions, valid):
    return super().__call__(x, positions, valid), None


class _ScanDecoderBlock(DecoderBlock):
  def __call__(self, x, positions, key_value, memory_valid):
    return super().__call__(x, positions, *key_value, memory_valid), None


class _ScanMemoryKV(MemoryKV):
  def __call__(self, memory, _):
    return memory, super().__call__(memory)


class TransformerSeq2Seq(nn.Module):
  """Source ids (B, S) and decoder input ids (B, T) -> next-token logits (B, T, vocab) float32."""
  num_outputs: int  # the shared vocabulary's size
  num_layers: int = 2  # encoder layers
  num_decoder_layers: int = 0  # 0: as many as the encoder
  d_model: int = 128
  num_heads: int = 4
  mlp_ratio: float = 4.0
  mlp: str = 'gelu'  # gelu | swiglu
  norm: str = 'layernorm'  # layernorm | rmsnorm
  positions: str = 'rope'  # rope | learned
  max_length: int = 512  # learned positions only
  shared_embedding: bool = True  # one embedding for source and target tokens
  tied_embedding: bool = True  # the target embedding also makes the output logits
  dropout: float = 0.1
  dtype: str = 'float32'
  scan_layers: bool = True
  remat: str = 'none'
  pad_id: int = 0
  # Pointer-generator output (see the module docstring). Not `copy`: that would hide Module.copy.
  pointer: bool = False
  attention: str = 'auto'  # attention.IMPLEMENTATIONS: auto is splash on TPU, cuDNN on GPU
  attention_block: int = 512  # splash attention's query and key blocks

  def _remat(self, block):
    if self.remat != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
    return block

  def _kwargs(self, train: bool) -> dict:
    return dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
                mlp_hidden=int(self.mlp_ratio * self.d_model), mlp=self.mlp, norm=self.norm,
                dropout=self.dropout, dtype=jnp.dtype(self.dtype), use_rope=self.positions == 'rope',
                train=train, attention=self.attention, attention_block=self.attention_block)

  def _embedding(self, name: str) -> nn.Embed:
    return nn.Embed(self.num_outputs, self.d_model, dtype=jnp.dtype(self.dtype), name=name,
                    embedding_init=_init(('vocab', 'embed'), nn.initializers.normal(0.02)))

  def _embed(self, embed: nn.Embed, tokens, positions, train: bool, side: str):
    x = embed(tokens)
    if self.positions == 'learned':
      x += nn.Embed(self.max_length, self.d_model, dtype=jnp.dtype(self.dtype), name=f'{side}_positions',
                    embedding_init=_init((None, 'embed'), nn.initializers.normal(0.02)))(positions)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

  @property
  def _decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @nn.compact
  def __call__(self, inputs=None, targets=None, train: bool = False, *, memory=None, decode: bool = False,
               positions=None):
    source_embed = self._embedding('embed')
    target_embed = source_embed if self.shared_embedding else self._embedding('target_embed')
    if memory is None:
      memory = self._encode(source_embed, inputs, train)
    if targets is None:
      return memory
    return self._decode(target_embed, targets, memory, train, decode=decode, positions=positions)

  def encode(self, inputs, train: bool = False):
    """{'key', 'value': (decoder layers, B, S, heads, head_dim), 'valid', 'source': (B, S)}."""
    return self(inputs, None, train)

  def _encode(self, embed, inputs, train: bool):
    kwargs = self._kwargs(train)
    valid = inputs != self.pad_id
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    x = self._embed(embed, inputs, positions, train, 'source')
    block_kwargs = dict(kwargs, num_kv_heads=self.num_heads, causal=False)
    if self.scan_layers:
      x, _ = nn.scan(self._remat(_ScanEncoderBlock), variable_axes={'params': 0},
                     split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast, nn.broadcast),
                     length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})(
                         **block_kwargs, name='encoder')(x, positions, valid)
    else:
      for i in range(self.num_layers):
        x = self._remat(Block)(**block_kwargs, name=f'encoder_{i}')(x, positions, valid)
    x = _norm(self.norm, jnp.dtype(self.dtype), 'encoder_norm')(x)
    # Every decoder layer's cross-attention keys and values, stacked on a leading layer axis.
    # On CPU, one matmul for all of them (bigjax/cpu/fused.py): their input gradients, summed, are
    # one dot, which XLA:CPU's oneDNN fusion can run.
    fused = cpu.fuse_qkv()
    kv = dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads, dtype=jnp.dtype(self.dtype),
              project=not fused)
    if self.scan_layers:
      _, (key, value) = nn.scan(_ScanMemoryKV, variable_axes={'params': 0}, split_rngs={'params': True},
                                length=self._decoder_layers, metadata_params={nn.PARTITION_NAME: 'layers'})(
                                    **kv, name='memory_kv')(x, None)
    else:
      pairs = [MemoryKV(**kv, name=f'memory_kv_{i}')(x) for i in range(self._decoder_layers)]
      key, value = (jnp.stack(parts) for parts in zip(*pairs))
    if fused:  # the kernels, stacked over layers: project them now
      key, value = cpu_fused.memory_kv_projection(x.astype(jnp.dtype(self.dtype)), key, value)
    return {'key': key, 'value': value, 'valid': valid, 'source': inputs}

  def _decode(self, embed, targets, memory, train: bool, *, decode: bool, positions):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(targets.shape[1]), targets.shape)
    x = self._embed(embed, targets, positions, train, 'target')
    kwargs = dict(self._kwargs(train), decode=decode)
    if self.scan_layers:
      x, _ = nn.scan(self._remat(_ScanDecoderBlock), variable_axes={'params': 0, 'cache': 0},
                     split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast, 0, nn.broadcast),
                     length=self._decoder_layers, metadata_params={nn.PARTITION_NAME: 'layers'})(
                         **kwargs, name='decoder')(x, positions, (memory['key'], memory['value']),
                                                   memory['valid'])
    else:
      for i in range(self._decoder_layers):
        x = self._remat(DecoderBlock)(**kwargs, name=f'decoder_{i}')(
            x, positions, memory['key'][i], memory['value'][i], memory['valid'])
    x = _norm(self.norm, jnp.dtype(self.dtype), 'decoder_norm')(x)
    if self.pointer:
      unembed = (embed.embedding.T if self.tied_embedding else
                 _Kernel((self.d_model, self.num_outputs), ('embed', 'vocab'), name='unembed')())
      return Copy(self.num_heads, self.d_model // self.num_heads, jnp.dtype(self.dtype), name='copy')(
          x, unembed, memory['key'][-1], memory['valid'], memory['source'])
    if self.tied_embedding:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.num_outputs, dtype=jnp.dtype(self.dtype), use_bias=False, name='unembed',
                        kernel_init=_init(('embed', 'vocab')))(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
