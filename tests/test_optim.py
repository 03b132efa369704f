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
  lr = optim.learning_rate(_optim(lr=0.1, schedule='cosine', warmup_steps=10), train_steps=110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.05)
  assert float(lr(10)) == pytest.approx(0.1) and float(lr(110)) == pytest.approx(0.0, abs=1e-9)
  assert float(lr(60)) == pytest.approx(0.05)  # half way through the cosine
  linear = optim.learning_rate(_optim(lr=0.2, schedule='linear'), train_steps=100)
  assert float(linear(50)) == pytest.approx(0.1)
  rsqrt = optim.learning_rate(_optim(lr=0.2, schedule='rsqrt'), train_steps=100)
  assert float(rsqrt(0)) == pytest.approx(0.2) and float(rsqrt(3)) == pytest.approx(0.1)
  constant = optim.learning_rate(_optim(lr=0.3), train_steps=100)
  assert float(constant(99)) == pytest.approx(0.3)


def test_schedule_steps_sets_the_length_and_the_schedule_ends_at_its_final_value():
  fixed = optim.learning_rate(_optim(lr=0.2, schedule='linear', schedule_steps=100), train_steps=300)
  assert float(fixed(50)) == pytest.approx(0.1) and float(fixed(100)) == float(fixed(250)) == 0.0
  follows = optim.learning_rate(_optim(lr=0.2, schedule='linear'), train_steps=300)
  assert float(follows(150)) == pytest.approx(0.1)  # schedule_steps=0: the length is train.steps
  assert optim.schedule_steps(_optim(schedule_steps=100), 300) == 100
  assert optim.schedule_steps(_optim(), 300) == 300
  assert optim.schedule_steps({}, 300) == 300  # a config.json written before the field existed


@pytest.mark.parametrize('name', sorted(optim.OPTIMIZERS))
def test_every_optimizer_minimizes_a_quadratic(name):
  tx = optim.build(_optim(name=name, lr=0.05, weight_decay=1e-3), train_steps=200)
  target = jnp.array([1.0, -2.0, 3.0])
  loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
  params = jnp.zeros(3)
  state = tx.init(params)
  for _ in range(200):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.05 * float(loss(jnp.zeros(3)))


def test_clipping_bounds_the_first_sgd_update():
  tx = optim.build(_optim(name='sgd', lr=1.0, clip_norm=0.5), train_steps=10)
  grads = jnp.array([30.0, 40.0])
  updates, _ = tx.update(grads, tx.init(grads), grads)
  np.testing.assert_allclose(updates, -0.5 * grads / 50.0, rtol=1e-6)


def test_momentum_and_nesterov_differ_from_sgd():
  grads = jnp.array([1.0])
  second = {}
  for name in ('sgd', 'momentum', 'nesterov'):
    tx = optim.build(_optim(name=name, lr=1.0, momentum=0.9), train_steps=10)
    state = tx.init(grads)
    _, state = tx.update(grads, state, grads)
    updates, _ = tx.update(grads, state, grads)
    second[name] = float(updates[0])
  assert second == pytest.approx({'sgd': -1.0, 'momentum': -1.9, 'nesterov': -(1 + 0.9 * 1.9)})


# The same gradient and params at every call, so each update follows from the formulas below alone.
PARAMS = {'dense': {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([0.5])},
          'norm': {'scale': jnp.array([3.0])}}
GRADS = {'dense': {'kernel': jnp.array([0.3, 0.4]), 'bias': jnp.array([-0.2])},
         'norm': {'scale': jnp.array([0.6])}}
LR, DECAY = 0.1, 0.01


def _first_updates(name, grads=GRADS, n=2):
  tx = optim.build(_optim(name=name, lr=LR, momentum=0.9, weight_decay=DECAY), train_steps=10)
  state, updates = tx.init(PARAMS), []
  for _ in range(n):
    update, state = tx.update(grads, state, PARAMS)
    updates.append(update)
  return updates


def _adam_direction(g):
  # Adam's bias-corrected first steps on a constant gradient: m_hat = g, v_hat = g^2.
  return g / (jnp.abs(g) + 1e-8)


def test_each_optimizer_name_gives_its_own_updates():
  """The first two updates of each optimizer against its formula: L2 (weight_decay) is added to
  every gradient for sgd, momentum, nesterov and adam; adamw decays decoupled, kernels only."""
  l2 = jax.tree.map(lambda g, p: g + DECAY * p, GRADS, PARAMS)
  mask = optim.decayed(PARAMS)
  expected = {
      'sgd': [jax.tree.map(lambda g: -LR * g, l2)] * 2,
      'momentum': [jax.tree.map(lambda g: -LR * g, l2), jax.tree.map(lambda g: -1.9 * LR * g, l2)],
      'nesterov': [jax.tree.map(lambda g: -1.9 * LR * g, l2), jax.tree.map(lambda g: -2.71 * LR * g, l2)],
      'adam': [jax.tree.map(lambda g: -LR * _adam_direction(g), l2)] * 2,
      'adamw': [jax.tree.map(lambda g, p, m: -LR * (_adam_direction(g) + DECAY * p * m), GRADS, PARAMS,
                             mask)] * 2,
  }
  assert sorted(expected) == sorted(optim.OPTIMIZERS)
  updates = {name: _first_updates(name) for name in optim.OPTIMIZERS}
  for name, want in expected.items():
    for got, wanted in zip(updates[name], want, strict=True):
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(wanted), strict=True):
        # rtol: Adam's float32 bias correction 1 - 0.999^2 keeps about 4 significant digits.
        np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=name)
  flat = {name: np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]) for name, u in updates.items()}
  names = sorted(flat)
  for i, a in enumerate(names):  # no two names are the same optimizer
    for b in names[i + 1:]:
      assert not np.allclose(flat[a], flat[b], rtol=1e-3), (a, b)


def test_weight_decay_alone_moves_weights_by_lr_times_decay():
  """With a zero gradient only the decay acts: adamw's -lr * decay * p on kernels (not on biases or
  norm scales, optim.decayed); L2's gradient decay * p on every parameter: -lr * decay * p for sgd,
  and for adam, which divides it by its own magnitude, -lr * sign(p)."""
  zeros = jax.tree.map(jnp.zeros_like, GRADS)
  assert optim.decayed(PARAMS) == {'dense': {'kernel': True, 'bias': False}, 'norm': {'scale': False}}
  (adamw,) = _first_updates('adamw', zeros, n=1)
  np.testing.assert_allclose(adamw['dense']['kernel'], -LR * DECAY * PARAMS['dense']['kernel'], rtol=1e-6)
  assert float(adamw['dense']['bias'][0]) == float(adamw['norm']['scale'][0]) == 0.0
  (sgd,) = _first_updates('sgd', zeros, n=1)
  (adam,) = _first_updates('adam', zeros, n=1)
  for got, adam_got, p in zip(*map(jax.tree.leaves, (sgd, adam, PARAMS)), strict=True):
    np.testing.assert_allclose(got, -LR * DECAY * p, rtol=1e-6)
    np.testing.assert_allclose(adam_got, -LR * np.sign(p), rtol=1e-5)  # Adam normalizes the L2 gradient


def test_schedule_count_is_the_optimizers_own_step():
  for name in optim.OPTIMIZERS:
    state = optim.build(_optim(name=name, clip_norm=1.0, weight_decay=DECAY), train_steps=10).init(PARAMS)
    assert int(optim.schedule_count(state)) == 0, name
  tx = optim.build(_optim(name='adam'), train_steps=10)
  state = tx.init(PARAMS)
  for _ in range(3):
    _, state = tx.update(GRADS, state, PARAMS)
  assert int(optim.schedule_count(state)) == 3
