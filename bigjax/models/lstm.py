"""The tutorial's text classifier, Embedding -> LSTM -> Dense, done properly.

The tutorial's PyTorch model classifies from every time step's output and lets padding in. Here
the LSTM carries its state unchanged through padding (left, right or anywhere), and the head sees
one vector per sequence pooled over real tokens only: the state after the last real token, or the
mean or max over real tokens. Padding therefore never changes a prediction.

Speed: the input projection of every time step is one (B*T, E) @ (E, 4H) matmul before the
recurrence, so each of the T sequential steps does only h @ W_h and the gate arithmetic.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.models.layers import dense, masked_pool, token_matmul


class LSTM(nn.Module):
  """One direction of one LSTM layer: (B, T, E) inputs -> (B, T, H) states and the final (B, H)."""
  hidden: int
  reverse: bool = False  # read the sequence from its end: the backward half of a bidirectional layer

  @nn.compact
  def __call__(self, x, valid):
    gates = 4 * self.hidden  # input, forget, cell, output, side by side
    w_input = self.param('input_kernel', nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ('embed', None)), (x.shape[-1], gates))
    w_recurrent = self.param('recurrent_kernel', nn.with_logical_partitioning(
        nn.initializers.orthogonal(column_axis=-1), (None, None)), (self.hidden, gates))
    # Forget-gate bias 1: remember by default early in training (Jozefowicz et al., 2015).
    bias = self.param('bias', nn.with_logical_partitioning(
        lambda key, shape: jnp.zeros(shape).at[self.hidden:2 * self.hidden].set(1.0), (None,)), (gates,))
    from_inputs = token_matmul(x, w_input) + bias  # every time step at once

    def step(carry, inputs):
      h, c = carry
      z, real = inputs
      i, f, g, o = jnp.split(z + h @ w_recurrent, 4, axis=-1)
      c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_next = jax.nn.sigmoid(o) * jnp.tanh(c_next)
      real = real[:, None]  # a pad leaves the state as it was
      h, c = jnp.where(real, h_next, h), jnp.where(real, c_next, c)
      return (h, c), h

    zeros = jnp.zeros((x.shape[0], self.hidden), from_inputs.dtype)
    (last, _), states = jax.lax.scan(step, (zeros, zeros), (from_inputs.swapaxes(0, 1), valid.T),
                                     reverse=self.reverse)
    return states.swapaxes(0, 1), last


class LSTMClassifier(nn.Module):
  """tokens (B, T) int, pad_id for padding -> class logits (B, num_outputs)."""
  num_outputs: int
  vocab_size: int = 10_002  # the tokenizer's: 10,000 words + pad + unknown
  embed_dim: int = 100
  hidden: int = 200
  num_layers: int = 1
  bidirectional: bool = False
  pooling: str = 'last'  # last | mean | max, over real tokens only
  dropout: float = 0.0
  pad_id: int = 0

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    valid = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.embed_dim, name='embed', embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ('vocab', 'embed')))(tokens)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    directions = (False, True) if self.bidirectional else (False,)
    for layer in range(self.num_layers):
      if layer:
        x = drop(x)
      runs = [LSTM(self.hidden, reverse, name=f'lstm_{layer}_{"backward" if reverse else "forward"}')(
          x, valid) for reverse in directions]
      x = jnp.concatenate([states for states, _ in runs], axis=-1)
      last = jnp.concatenate([final for _, final in runs], axis=-1)
    pooled = drop(masked_pool(x, valid, self.pooling, last))
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(pooled)
