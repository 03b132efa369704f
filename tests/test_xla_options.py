"""train.cpu_matmul=onednn: oneDNN's matmuls on x86 CPUs, and the guard against the oneDNN fusions
that XLA 0.10 cannot run (they abort the process)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import train
from bigjax.cpu import xla_options
from helpers import assert_resumed, final_state, lm_batches, tiny_lm_config, train_steps

pytestmark = pytest.mark.skipif(not xla_options.onednn_applies('onednn'),
                                reason="oneDNN's matmuls are for x86-64 CPUs only")


def _args(rows=64):
  rng = np.random.default_rng(rows)
  shapes = ((rows, 16), (16, 24), (16, 24))  # x, w1, w2
  return tuple(jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for shape in shapes)


def _shared_input_grad(x, w1, w2):
  """x's gradient through two matmuls of x: XLA fuses the two dots and their sum for oneDNN."""
  return jax.grad(lambda x: jnp.sum(jnp.tanh(x @ w1) * (x @ w2)))(x)


def _mlp(x, w1, w2):
  return jnp.tanh(x @ w1) @ w2.T


def _mlp_grad(x, w1, w2):
  """A GELU MLP's gradients: XLA fuses the GELU's gradient into the next matmul's input."""
  return jax.grad(lambda x, w1, w2: jnp.sum(jax.nn.gelu(x @ w1) @ w2.T), argnums=(0, 1, 2))(x, w1, w2)


def _jit_and_compile(fn, cpu_matmul):
  make = lambda options: jax.jit(fn, compiler_options=options)  # noqa: E731
  return xla_options.jit_and_compile(make, _args(), cpu_matmul)


@pytest.mark.parametrize('fn', [_shared_input_grad, _mlp_grad], ids=['two_dots_in_one', 'gelu_into_a_dot'])
def test_unsafe_fusions_are_found_and_compiled_without_onednn_at_every_shape(fn):
  unsafe = jax.jit(fn, compiler_options=xla_options.ONEDNN).lower(*_args()).compile()
  assert xla_options.unsafe_onednn_fusions(unsafe.as_text())  # never run: it would abort pytest
  step, compiled = _jit_and_compile(fn, 'onednn')
  assert 'onednn_fusion' not in compiled.as_text()
  for rows in (64, 48):  # 48: a shape compiled at its first call, through the same check
    for got, expected in zip(jax.tree.leaves(step(*_args(rows))), jax.tree.leaves(jax.jit(fn)(*_args(rows))),
                             strict=True):
      np.testing.assert_array_equal(got, expected)


def test_single_dot_fusions_keep_onednn_and_the_numbers():
  step, compiled = _jit_and_compile(_mlp, 'onednn')
  hlo = compiled.as_text()
  assert 'onednn_fusion' in hlo and not xla_options.unsafe_onednn_fusions(hlo)
  np.testing.assert_allclose(step(*_args()), jax.jit(_mlp)(*_args()), rtol=1e-5, atol=1e-5)
  assert 'onednn_fusion' not in _jit_and_compile(_mlp, 'xla')[1].as_text()


def _mean_of_196(a, w):
  return (a @ w) / 196


def test_a_long_dot_scaled_by_a_constant_is_compiled_without_onednn_and_computes_right():
  """oneDNN runs `(a @ w) / 196` with a (8, 1000) into numbers hundreds of times too large (a mean's
  gradient in a ViT); a contraction of 128 scaled the same way keeps oneDNN, and its numbers."""
  rng = np.random.default_rng(0)
  for contraction, keeps_onednn in ((1000, False), (128, True)):
    a, w = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for shape in ((8, contraction),
                                                                                   (contraction, 384)))
    make = lambda options: jax.jit(_mean_of_196, compiler_options=options)  # noqa: E731
    step, compiled = xla_options.jit_and_compile(make, (a, w), 'onednn')
    assert ('onednn_fusion' in compiled.as_text()) == keeps_onednn
    np.testing.assert_allclose(step(a, w), jax.jit(_mean_of_196)(a, w), rtol=1e-5, atol=1e-5)


def _pooled_head_grads(mean):
  """The gradients of a ViT's global average pooling and its head over 1,000 classes: the mean's
  division follows the head's input-gradient matmul, which contracts over the classes."""
  loss = lambda x, w: jnp.sum(jnp.tanh(mean(x, 1) @ w))  # noqa: E731
  return jax.grad(loss, argnums=(0, 1))


def test_the_cpu_mean_keeps_a_pooled_heads_gradient_on_onednn_bit_for_bit():
  """bigjax/cpu/pool.py: forward and gradient equal the plain mean's, and under oneDNN the gradient
  leaves the head's long matmul unscaled (the plain mean's is refused, the step on XLA's matmuls)."""
  from bigjax.cpu import pool  # noqa: PLC0415
  rng = np.random.default_rng(0)
  x, w = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for shape in ((8, 196, 384), (384, 1000)))
  plain = _pooled_head_grads(lambda x, axis: x.mean(axis))
  ours = _pooled_head_grads(pool.mean)
  np.testing.assert_array_equal(pool.mean(x, 1), x.mean(1))
  expected = jax.jit(plain)(x, w)
  for got, want in zip(jax.jit(ours)(x, w), expected, strict=True):
    np.testing.assert_array_equal(got, want)
  refused = jax.jit(plain, compiler_options=xla_options.ONEDNN).lower(x, w).compile()
  assert xla_options.unsafe_onednn_fusions(refused.as_text())
  step, compiled = xla_options.jit_and_compile(lambda options: jax.jit(ours, compiler_options=options),
                                               (x, w), 'onednn')
  assert 'onednn_fusion' in compiled.as_text() and not xla_options.unsafe_onednn_fusions(compiled.as_text())
  for got, want in zip(step(x, w), expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('mlp, atol', [('gelu', 1e-5), pytest.param('swiglu', 1e-4, marks=pytest.mark.slow)])
def test_the_lm_trains_alike_with_onednn_and_deterministically(data_dir, mlp, atol):
  """Every matmul of the step is oneDNN's, nothing fell back: query/key/value, and SwiGLU's gate
  and up, are one matmul each (as two, their summed input gradients are an unsafe fusion). atol:
  Adam turns the rounding of a near-zero gradient into a step of up to the learning rate."""
  configs = {cm: tiny_lm_config(data_dir, cpu_matmul=cm) for cm in ('xla', 'onednn')}
  for c in configs.values():
    c.model.mlp = mlp
  batches = lm_batches(configs['xla'], 3)
  losses, params, hlo = train_steps(configs['onednn'], batches)
  assert 'onednn_fusion' in hlo and not xla_options.unsafe_onednn_fusions(hlo)
  xla_losses, xla_params, _ = train_steps(configs['xla'], batches)
  np.testing.assert_allclose(losses, xla_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(xla_params), strict=True):
    np.testing.assert_allclose(a, b, atol=atol)
  again_losses, again, _ = train_steps(configs['onednn'], batches)
  assert again_losses == losses
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # 15-25 s; CI keeps the determinism of a onednn run, and resume is tested for XLA's matmuls
def test_a_resumed_onednn_run_ends_bitwise_where_an_uninterrupted_one_does(data_dir, tmp_path, caplog):
  config = tiny_lm_config(data_dir, cpu_matmul='onednn', steps=12, eval_every=0, log_every=4)
  config.checkpoint.update({'every': 4, 'keep': 5})
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  train.train_and_evaluate(config, a)
  train.train_and_evaluate(config, b)
  for step in ('8', '12'):  # b died just before step 8's checkpoint
    shutil.rmtree(os.path.join(b, 'checkpoints', step))
  caplog.set_level('INFO')  # the resume line is INFO
  caplog.clear()
  train.train_and_evaluate(config, b)
  assert_resumed(caplog.text, b, 4)
  uninterrupted, resumed = final_state(config, a), final_state(config, b)
  for x, y in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # 11 s: CI's 15 minutes; the oneDNN LM training test stays in CI
def test_a_model_with_dropout_trains_with_xlas_matmuls_as_onednns_change_its_numbers(data_dir, caplog):
  """oneDNN's matmuls change what a block with dropout computes (xla_options.matmuls_for): such a
  step is compiled with XLA's own, and trains exactly as with train.cpu_matmul=xla."""
  configs = {cm: tiny_lm_config(data_dir, cpu_matmul=cm) for cm in ('xla', 'onednn')}
  for c in configs.values():
    c.model.dropout = 0.1
  batches = lm_batches(configs['xla'], 3)
  caplog.set_level('WARNING')
  losses, params, hlo = train_steps(configs['onednn'], batches)
  assert 'onednn_fusion' not in hlo and 'dropout' in caplog.text
  xla_losses, xla_params, _ = train_steps(configs['xla'], batches)
  assert losses == xla_losses
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(xla_params), strict=True):
    np.testing.assert_array_equal(a, b)
