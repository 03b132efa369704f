"""The tutorial's text classifier, Embedding -> LSTM -> Dense, done properly.

The tutorial's PyTorch model classifies from every time step's output and lets padding in. Here
the LSTM carries its state unchanged through padding (left, right or anywhere), and the head sees
one vector per sequence pooled over real tokens only: the state after the last real token, or the
mean or max over real tokens. Padding therefore never changes a prediction.

Speed: each layer is a custom_vjp with a hand-written backward pass, a lax.scan: every step's
input projection as one (T*B, E) @ (E, 4H) matmul before the loop, and the weight gradients as one
matmul each after the backward loop. On CPU the same layer runs in C++ where bigjax.cpu.lstm says it
applies (unless `cpu_kernel=False`); that module is the only place this file meets it. Both are
tested against autodiff of a plain LSTM; benchmarks/lstm_vs_pytorch.py measures them.
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigjax.cpu import lstm as cpu_lstm
from bigjax.models.layers import dense, masked_pool, token_matmul


def _gate_scale(hidden, dtype):
  """0.5 on the sigmoid gates (input, forget, output), 1 on the cell gate: see _activate."""
  return jnp.full(4 * hidden, 0.5, dtype).at[2 * hidden:3 * hidden].set(1.0)


def _activate(pre, hidden):
  """All four gates at once: sigmoid(x) = tanh(x / 2) / 2 + 1/2, so one tanh over the contiguous
  (B, 4H) block, which XLA runs faster than sigmoid and tanh on four slices."""
  scale = _gate_scale(hidden, pre.dtype)
  return jnp.tanh(pre * scale) * scale + (1 - scale)


def _scan_forward(x, valid, weights, reverse):
  w_input, w_recurrent, bias = weights
  hidden = w_recurrent.shape[0]
  from_inputs = token_matmul(x, w_input) + bias  # every time step's input projection at once

  def step(carry, inputs):
    h, c = carry
    z, real = inputs
    gates = _activate(z + h @ w_recurrent, hidden)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_next = f * c + i * g
    tanh_c = jnp.tanh(c_next)
    real = real[:, None]  # a pad leaves the state as it was
    h_next = jnp.where(real, o * tanh_c, h)
    # The backward needs this step's gates, incoming h and c, and tanh of its new c. Storing the
    # incoming h (not reading h_{t-1} from states) spares the weight gradient two shifted copies.
    return (h_next, jnp.where(real, c_next, c)), (h_next, h, c, tanh_c, gates)

  zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
  (last, _), (states, h_in, c_in, tanh_c, gates) = jax.lax.scan(step, (zeros, zeros), (from_inputs, valid),
                                                                reverse=reverse)
  return (states, last), (x, valid, weights, h_in, c_in, tanh_c, gates)


def _scan_backward(reverse, residuals, cotangents):
  """Runs back through time computing only what is sequential: each step's gate gradient and
  d h_{t-1} = d_gates @ W_h^T. The weight gradients are then one matmul each over all steps,
  where autodiff of the scan would accumulate a K=B one into W_h's gradient every step."""
  x, valid, (w_input, w_recurrent, _), h_in, c_in, tanh_c, gates = residuals
  d_states, d_last = cotangents
  hidden, w_t = w_recurrent.shape[0], w_recurrent.T
  scale = _gate_scale(hidden, gates.dtype)

  def step(carry, inputs):
    dh, dc = carry
    d_out, c, tc, a, real = inputs
    dh = dh + d_out
    i, f, g, o = jnp.split(a, 4, axis=-1)
    dc_next = dc + dh * o * (1 - tc * tc)
    d_gates = jnp.concatenate([dc_next * g, dc_next * c, dc_next * i, dh * tc], axis=-1)
    # through the activation: s (1 - s) for a sigmoid, 1 - g^2 for the tanh
    d_pre = d_gates * jnp.where(scale == 1, 1 - a * a, a * (1 - a))
    real = real[:, None]  # a pad passed the state through: so does its gradient
    d_pre = jnp.where(real, d_pre, 0)
    return (jnp.where(real, d_pre @ w_t, dh), jnp.where(real, dc_next * f, dc)), d_pre

  _, d_pre = jax.lax.scan(step, (d_last, jnp.zeros_like(d_last)),
                          (d_states, c_in, tanh_c, gates, valid), reverse=not reverse)
  d_pre_2d = d_pre.reshape(-1, d_pre.shape[-1])
  over_tokens = (((0,), (0,)), ((), ()))  # contract the (T * B) token axis
  d_weights = (jax.lax.dot_general(x.reshape(-1, x.shape[-1]), d_pre_2d, over_tokens),
               jax.lax.dot_general(h_in.reshape(-1, hidden), d_pre_2d, over_tokens), d_pre_2d.sum(0))
  return token_matmul(d_pre, w_input.T), d_weights


class _LayerOptions(NamedTuple):
  reverse: bool  # read the sequence from its end
  kernel: bool  # bigjax.cpu.lstm's C++ layer (it applies), not the scan
  with_states: bool  # return (states, last); False: only last, and no states' gradient to read


def _layer_forward(x, valid, weights, options):
  run = cpu_lstm.forward if options.kernel else _scan_forward
  (states, last), residuals = run(x, valid, weights, options.reverse)
  return ((states, last) if options.with_states else last), residuals


def _layer_backward(options, residuals, cotangents):
  reverse, kernel, with_states = options
  d_states, d_last = cotangents if with_states else (None, cotangents)
  if d_states is None and not kernel:
    d_states = jnp.zeros(residuals[0].shape[:2] + d_last.shape[-1:], d_last.dtype)
  d_x, d_weights = (cpu_lstm.backward if kernel else _scan_backward)(reverse, residuals, (d_states, d_last))
  return d_x, None, d_weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer(x, valid, weights, options: _LayerOptions):
  """One LSTM layer, time-major: (T, B, E) x, (T, B) valid, weights ((E, 4H) W_x, (H, 4H) W_h, (4H)
  bias) -> (T, B, H) states and the (B, H) last, or only the last (see _LayerOptions)."""
  return _layer_forward(x, valid, weights, options)[0]


_layer.defvjp(_layer_forward, _layer_backward)


class LSTM(nn.Module):
  """One direction of one LSTM layer: (B, T, E) inputs -> (B, T, H) states and the final (B, H);
  with time_major, (T, B, E) inputs and (T, B) valid -> (T, B, H) states."""
  hidden: int
  reverse: bool = False  # read the sequence from its end: the backward half of a bidirectional layer
  cpu_kernel: bool = True  # on CPU, the recurrence in C++ (bigjax.cpu.lstm); False: XLA's scan
  return_states: bool = True  # False: (None, last), and the backward skips the states' zero gradient
  time_major: bool = False  # the layer runs time-major: batch-major inputs cost a transpose each way

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
    kernel = self.cpu_kernel and cpu_lstm.applies(x.dtype)
    # Time-major inside: a step's rows are contiguous, and transposing x (E wide) is cheaper than
    # transposing anything 4H wide.
    to_layer = (lambda a: a) if self.time_major else (lambda a: a.swapaxes(0, 1))
    out = _layer(to_layer(x), to_layer(valid), (w_input, w_recurrent, bias),
                 _LayerOptions(self.reverse, kernel, self.return_states))
    return (to_layer(out[0]), out[1]) if self.return_states else (None, out)


class LSTMClassifier(nn.Module):
  """tokens (B, T) int, pad_id for padding -> class logits (B, num_outputs)."""
  num_outputs: int
  vocab_size: int = 0  # 0: the dataset tokenizer's (models.build fills it in)
  embed_dim: int = 100
  hidden: int = 200
  num_layers: int = 1
  bidirectional: bool = False
  pooling: str = 'last'  # last | mean | max, over real tokens only
  dropout: float = 0.0  # between layers and on the pooled vector
  word_dropout: float = 0.0  # training only: each token's embedding zeroed with this probability
  pad_id: int = 0
  cpu_kernel: bool = True  # on CPU, the LSTM recurrence in C++ (bigjax.cpu.lstm); False: XLA's scan

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    tokens = inputs  # (B, T) ids
    # Time-major from the lookup on, as the LSTM runs: gathering the embeddings in that order spares
    # a transpose of them and of their gradient.
    valid = (tokens != self.pad_id).T
    # Embeddings of std 1/sqrt(embed_dim) (flax's default), not PyTorch's N(0, 1): Adam's steps are
    # then large beside them, the words are learnt sooner and generalize better (a higher test F1 on
    # the offline snippets with the tutorial's hyperparameters).
    x = nn.Embed(self.vocab_size, self.embed_dim, name='embed', embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(self.embed_dim ** -0.5), ('vocab', 'embed')))(tokens.T)
    if train and self.word_dropout:
      # Word dropout (Iyyer et al., 2015): a dropped word keeps its place in the sequence but says
      # nothing, so the classifier cannot lean on a few telltale names. No rescaling: zero is "unknown".
      dropped = jax.random.bernoulli(self.make_rng('dropout'), self.word_dropout, tokens.shape).T
      x = jnp.where(dropped[..., None], 0, x)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    directions = (False, True) if self.bidirectional else (False,)
    for layer in range(self.num_layers):
      if layer:
        x = drop(x)
      # The states are read by the next layer, or by mean and max pooling; 'last' needs only the last.
      keep_states = layer < self.num_layers - 1 or self.pooling != 'last'
      names = [f'lstm_{layer}_{"backward" if reverse else "forward"}' for reverse in directions]
      runs = [LSTM(self.hidden, reverse, self.cpu_kernel, keep_states, time_major=True, name=name)(x, valid)
              for reverse, name in zip(directions, names)]
      x = jnp.concatenate([states for states, _ in runs], axis=-1) if keep_states else None
      last = jnp.concatenate([final for _, final in runs], axis=-1)
    pooled = drop(masked_pool(None if x is None else x.swapaxes(0, 1), valid.T, self.pooling, last))
    return dense(self.num_outputs, ('embed', 'classes'), name='head')(pooled)
