"""The C++ LSTM layer: bigjax/models/lstm.py's recurrence as two XLA FFI calls to lstm_cpu.cc.

bigjax/models/lstm.py asks `applies` whether to use it, and then runs `forward` and `backward` in
place of its lax.scan pair: the same inputs and outputs, so the layer's custom_vjp does not care
which runs. lstm_cpu.cc says why the recurrence is native code; native.py builds and loads it.
"""

import jax
import jax.numpy as jnp

from bigjax import sharding
from bigjax.cpu import native

KERNELS = ('BigjaxLstmForward', 'BigjaxLstmBackward')  # lstm_cpu.cc's FFI handlers


def load() -> bool:
  """Builds (once per source and CPU) and registers lstm_cpu.cc; False, after one warning, where
  it cannot be built."""
  return native.load('lstm_cpu', KERNELS)


def applies(dtype) -> bool:
  """The C++ layer runs this layer: float32 on the CPU backend, and lstm_cpu.cc built. Elsewhere
  the caller's lax.scan computes the same."""
  return jnp.dtype(dtype) == jnp.float32 and sharding.platform() == 'cpu' and load()


def forward(x, valid, weights, reverse, targets=KERNELS):
  """The scan's forward as one FFI call; it keeps less for the backward. (targets: the registered
  names of its two handlers; benchmarks/lstm_kernel_ab.py registers edited copies.)"""
  (steps, batch, _), (hidden, width) = x.shape, weights[1].shape
  state = jax.ShapeDtypeStruct((steps, batch, hidden), x.dtype)
  states, last, cells, gates = jax.ffi.ffi_call(
      targets[0], (state, state.update(shape=(batch, hidden)), state,
                   state.update(shape=(steps, batch, width))),
      vmap_method='sequential')(x, valid, *weights, reverse=reverse)
  return (states, last), (x, valid, weights, states, cells, gates)


def backward(reverse, residuals, cotangents, targets=KERNELS):
  """The scan's backward as one FFI call (d_states None: zeros it need not read)."""
  x, valid, weights, *saved = residuals
  d_states, d_last = cotangents
  cotangents = (jnp.zeros((0,), x.dtype) if d_states is None else d_states, d_last)
  like = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, *weights)]
  d_x, *d_weights = jax.ffi.ffi_call(targets[1], like, vmap_method='sequential')(
      x, valid, *weights[:2], *saved, *cotangents, reverse=reverse)
  return d_x, tuple(d_weights)
