"""Optimizers and schedules from the config do what their names say."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import optim
from bigjax.config import base_config


def _optim(**fields):
  c = base_config().optim
  c.update(fields)
  return c


def test_schedules():
  lr = optim.learning_rate(_optim(lr=0.1, schedule='cosine', warmup_steps=10), total_steps=110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.05)
  assert float(lr(10)) == pytest.approx(0.1) and float(lr(110)) == pytest.approx(0.0, abs=1e-9)
  assert float(lr(60)) == pytest.approx(0.05)  # half way through the cosine
  linear = optim.learning_rate(_optim(lr=0.2, schedule='linear'), total_steps=100)
  assert float(linear(50)) == pytest.approx(0.1)
  rsqrt = optim.learning_rate(_optim(lr=0.2, schedule='rsqrt'), total_steps=100)
  assert float(rsqrt(0)) == pytest.approx(0.2) and float(rsqrt(3)) == pytest.approx(0.1)
  constant = optim.learning_rate(_optim(lr=0.3), total_steps=100)
  assert float(constant(99)) == pytest.approx(0.3)


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_minimizes_a_quadratic(name):
  tx = optim.build(_optim(name=name, lr=0.05, weight_decay=1e-3), total_steps=200)
  target = jnp.array([1.0, -2.0, 3.0])
  loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
  params = jnp.zeros(3)
  state = tx.init(params)
  for _ in range(200):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.05 * float(loss(jnp.zeros(3)))


def test_clipping_bounds_the_first_sgd_update():
  tx = optim.build(_optim(name='sgd', lr=1.0, clip_norm=0.5), total_steps=10)
  grads = jnp.array([30.0, 40.0])
  updates, _ = tx.update(grads, tx.init(grads), grads)
  np.testing.assert_allclose(updates, -0.5 * grads / 50.0, rtol=1e-6)


def test_momentum_and_nesterov_differ_from_sgd():
  grads = jnp.array([1.0])
  second = {}
  for name in ('sgd', 'momentum', 'nesterov'):
    tx = optim.build(_optim(name=name, lr=1.0, momentum=0.9), total_steps=10)
    state = tx.init(grads)
    _, state = tx.update(grads, state, grads)
    updates, _ = tx.update(grads, state, grads)
    second[name] = float(updates[0])
  assert second == pytest.approx({'sgd': -1.0, 'momentum': -1.9, 'nesterov': -(1 + 0.9 * 1.9)})
