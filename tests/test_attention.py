"""model.attention: every implementation against XLA's jax.nn.dot_product_attention, values and
gradients. Splash attention (TPU's Pallas kernel) runs here in Pallas's interpret mode."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax.cpu import attention as cpu_attention
from bigjax.models import attention
from helpers import REPO


def _inputs(kv_heads, t=256, s=256, heads=4, head_dim=64):
  q = jax.random.normal(jax.random.key(0), (2, t, heads, head_dim))
  k, v = (jax.random.normal(jax.random.key(i), (2, s, kv_heads, head_dim)) for i in (1, 2))
  valid = jnp.arange(s)[None, :] < jnp.array([[s], [s - 77]])  # the second example is padded
  return q, k, v, valid


def _value_and_grads(implementation, q, k, v, valid, *, causal):
  def loss(q, k, v):
    out = attention.attention(q, k, v, valid, causal=causal, implementation=implementation, block_size=128)
    return jnp.sum(jnp.sin(out)), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


@pytest.mark.parametrize('kv_heads,causal', [(4, True), (2, False), (1, True)],
                         ids=['multi_head_causal', 'grouped_padded_encoder', 'multi_query_causal'])
def test_splash_attention_equals_xla(kv_heads, causal):
  q, k, v, valid = _inputs(kv_heads)
  out, grads = _value_and_grads('splash', q, k, v, valid, causal=causal)
  want, want_grads = _value_and_grads('xla', q, k, v, valid, causal=causal)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  for got, ref in zip(grads, want_grads):
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_splash_cross_attention_of_other_lengths_and_an_example_with_no_real_key():
  """Queries over a longer memory. An all-padding example (a batch's filler) has no defined
  attention; it must stay finite, so that it cannot poison the gradients."""
  q, k, v, _ = _inputs(4, t=128, s=384)
  valid = jnp.stack([jnp.arange(384) < 300, jnp.zeros(384, bool)])
  out, grads = _value_and_grads('splash', q, k, v, valid, causal=False)
  want, _ = _value_and_grads('xla', q, k, v, valid, causal=False)
  np.testing.assert_allclose(out[0], want[0], atol=1e-5, rtol=1e-5)
  assert all(bool(jnp.isfinite(x).all()) for x in (out, *grads))


def test_lengths_splash_cannot_tile_and_cudnn_off_a_gpu_fall_back_to_xla(caplog):
  q, k, v, valid = _inputs(2, t=40, s=40)
  want, _ = _value_and_grads('xla', q, k, v, valid, causal=True)
  for name in ('splash', 'cudnn'):
    got, _ = _value_and_grads(name, q, k, v, valid, causal=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
  assert "model.attention=splash needs lengths" in caplog.text
  assert "model.attention=cudnn cannot run" in caplog.text


def test_auto_is_the_platforms_own_and_decoding_is_never_fused(monkeypatch):
  for platform, name in [('tpu', 'splash'), ('gpu', 'cudnn'), ('cpu', 'cpu')]:
    monkeypatch.setattr(attention.sharding, 'platform', lambda platform=platform: platform)
    assert attention.resolve('auto') == name
    assert attention.resolve('xla') == 'xla'
    assert attention.unfused('auto') == ('cpu' if platform == 'cpu' else 'xla')


@pytest.mark.parametrize('kv_heads', [4, 2, 1], ids=['multi_head', 'grouped', 'multi_query'])
def test_cpu_attention_equals_xla(kv_heads):
  """The heads-major attention used on CPU against jax.nn.dot_product_attention: causal, with a
  left-padded row and a query that sees no real key at all."""
  q = jax.random.normal(jax.random.key(0), (2, 6, 4, 8))
  k, v = (jax.random.normal(jax.random.key(i), (2, 6, kv_heads, 8)) for i in (1, 2))
  valid = jnp.arange(6)[None, :] >= jnp.array([[0], [3]])
  mask = valid[:, None, None, :] & (jnp.arange(6)[None, :] <= jnp.arange(6)[:, None])[None, None]

  def loss(fn):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, mask=mask))), (0, 1, 2)))

  ours = loss(cpu_attention.heads_major_attention)(q, k, v)
  reference = loss(jax.nn.dot_product_attention)(q, k, v)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_whole_function_with_query_blocks_equals_xla():
  """The mask (padding, causality) and two query blocks, on the CPU path, against the reference."""
  q = jax.random.normal(jax.random.key(0), (2, 8, 4, 8))
  k, v = (jax.random.normal(jax.random.key(i), (2, 8, 2, 8)) for i in (1, 2))
  valid = jnp.arange(8)[None, :] >= jnp.array([[0], [3]])
  mask = valid[:, None, None, :] & (jnp.arange(8)[None, :] <= jnp.arange(8)[:, None])[None, None]
  want = attention.reference(q, k, v, mask)
  got = attention.attention(q, k, v, valid, causal=True, blocks=2)
  rows = valid[:, :, None, None]  # a query that sees no real key is undefined either way
  np.testing.assert_allclose(jnp.where(rows, got, 0), jnp.where(rows, want, 0), rtol=1e-5, atol=1e-5)


SHARDED = '''
import json
import flax.linen as nn
import jax, jax.numpy as jnp
from bigjax import sharding
from bigjax.config import LOGICAL_RULES
from bigjax.models import attention
mesh = jax.make_mesh((1, 2, 4), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
errors = {}
for kv_heads in (8, 2, 1):  # the tensor axis (4) splits the key/value heads; is wider than them
  q = jax.random.normal(jax.random.key(0), (2, 128, 8, 32))
  k, v = (jax.random.normal(jax.random.key(i), (2, 128, kv_heads, 32)) for i in (1, 2))
  valid = jnp.arange(128)[None, :] < jnp.array([[128], [90]])
  def grads(name):
    loss = lambda q, k, v: jnp.sum(jnp.sin(attention.attention(
        q, k, v, valid, causal=True, implementation=name, block_size=128)))
    with sharding.active(mesh, LOGICAL_RULES):
      return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)
  (loss, got), (want_loss, want) = grads('splash'), grads('xla')
  errors[kv_heads] = [abs(float(loss - want_loss)) / abs(float(want_loss)),
                      max(float(jnp.abs(a - b).max()) for a, b in zip(got, want))]
print(json.dumps(errors))
'''


@pytest.mark.slow  # 25-50 s: a subprocess of 8 simulated devices, interpreted kernels
def test_splash_attention_sharded_over_batch_and_heads_equals_xla():
  """Under a (data, fsdp=2, tensor=4) mesh of simulated devices splash runs in shard_map, one
  device's examples and heads each; with fewer key/value heads than the tensor axis, each device
  takes its own query heads' key/value heads."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-c', SHARDED], cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.splitlines()[-1])
  for loss, grads in errors.values():
    assert loss < 1e-5 and grads < 1e-4, errors
