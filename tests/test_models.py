"""Models: shapes, logical-axis annotations on every parameter, BatchNorm state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import models
from bigjax.config import LOGICAL_RULES, base_config
from helpers import build_model


@pytest.mark.parametrize('name, fields', [
    ('mlp', {'depth': 3, 'width': 32}),
    ('lenet', {'features': (8, 16), 'hidden': 32}),
    ('resnet', {'stage_sizes': (1, 1), 'width': 8}),
])
def test_output_shape_and_every_param_is_annotated(name, fields):
  model = build_model(name, **fields)
  x = jnp.ones((4, 8, 8, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  boxed = jax.tree.leaves(variables['params'], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
  assert all(len(v.names) == v.value.ndim for v in boxed)
  # Names the sharding rules know, at least one per parameter: a misspelt or all-None annotation
  # would leave that parameter replicated on every device without a word.
  known = {name for name, _ in LOGICAL_RULES}
  for v in boxed:
    assert set(v.names) - {None} and set(v.names) - {None} <= known, v.names
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x))
  out = model.apply(params, x, train=False)
  assert out.shape == (4, 10)


def test_activation_changes_the_function():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  outs = {}
  for act in ('relu', 'tanh', 'sigmoid', 'gelu', 'silu'):
    model = build_model('mlp', depth=1, width=16, activation=act)
    outs[act] = model.apply(nn.meta.unbox(model.init(jax.random.key(0), x)), x)
  values = list(outs.values())
  assert all(not np.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1:])


def test_dropout_only_in_training():
  model = build_model('mlp', depth=1, width=64, dropout=0.5)
  x = jnp.ones((2, 8, 8, 1))
  params = nn.meta.unbox(model.init(jax.random.key(0), x))
  a = model.apply(params, x, train=True, rngs={'dropout': jax.random.key(1)})
  b = model.apply(params, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(model.apply(params, x), model.apply(params, x))


def test_resnet_batch_stats_update_in_training_and_are_used_in_eval():
  model = build_model('resnet', stage_sizes=(1,), width=8)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1)) * 3 + 2
  variables = nn.meta.unbox(model.init(jax.random.key(0), x))
  assert set(variables) == {'params', 'batch_stats'}
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updated['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  eval_old = model.apply(variables, x)
  eval_new = model.apply({**variables, **updated}, x)
  assert not np.allclose(eval_old, eval_new)


def test_unknown_model_field_is_rejected():
  from bigjax.config import ConfigError
  c = base_config().model
  c.name = 'lenet'
  c.width = 3  # the MLP's field, not LeNet's
  with pytest.raises(ConfigError, match='model.width'):
    models.check_config(c)


def test_token_matmul_is_the_3d_dot_forward_and_backward():
  from bigjax.models.layers import token_matmul
  x = jax.random.normal(jax.random.key(0), (3, 5, 8))
  w = jax.random.normal(jax.random.key(1), (8, 4, 2))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  einsum = lambda x, w: jnp.einsum('btd,dnh->btnh', x, w)  # noqa: E731
  np.testing.assert_allclose(token_matmul(x, w.reshape(8, -1)).reshape(3, 5, 4, 2), einsum(x, w), rtol=1e-5)
  ours = jax.grad(loss(lambda x, w: token_matmul(x, w.reshape(8, -1))), argnums=(0, 1))(x, w)
  for a, b in zip(ours, jax.grad(loss(einsum), argnums=(0, 1))(x, w)):
    np.testing.assert_allclose(a, b.reshape(a.shape), rtol=1e-4, atol=1e-5)
