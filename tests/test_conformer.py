"""The Conformer-CTC speech model: shapes, frame validity, padding invariance, scan, SpecAugment, sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax import audio
from bigjax.config import ConfigError
from bigjax.models.conformer import SIZES, ConformerCTC, subsampled_lengths

SMALL = dict(d_model=32, num_layers=2, num_heads=2, conv_kernel=5, subsample_channels=8, dropout=0.0,
             n_mels=40)


def _audio(lengths, samples):
  rng = np.random.default_rng(0)
  x = rng.integers(-4000, 4000, (len(lengths), samples)).astype(np.int16)
  x[np.arange(samples)[None] >= np.asarray(lengths)[:, None]] = 0
  return jnp.asarray(x), jnp.asarray(lengths, jnp.int32)


def _init(model, x, lengths):
  return jax.jit(model.init)({'params': jax.random.key(0)}, x, lengths)


def _apply(model, *args, **kwargs):
  """model.apply, jitted: compiling once is faster than running op by op."""
  return jax.jit(model.apply, static_argnames=('train', 'mutable'))(*args, **kwargs)


def _count(variables):
  return sum(a.size for a in jax.tree.leaves(nn.meta.unbox(variables['params'])))


def test_shapes_and_valid_frames():
  model = ConformerCTC(num_outputs=29, **SMALL)
  x, lengths = _audio([16000, 9000, 560], 16000)
  variables = _init(model, x, lengths)
  logits, valid = _apply(model, variables, x, lengths)
  # frames: 1 + (L - 400) // 160 = 98, 54, 2; then ceil(n / 2) twice.
  assert logits.shape == (3, 25, 29) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(valid.sum(1), [25, 14, 1])
  frames = audio.num_frames(np.asarray(lengths), 400, 160)
  np.testing.assert_array_equal(subsampled_lengths(frames), [25, 14, 1])
  np.testing.assert_array_equal(valid, np.arange(25)[None] < np.array([25, 14, 1])[:, None])
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('encoder', ['conformer', pytest.param('lstm', marks=pytest.mark.slow)])  # CI budget
def test_padding_never_changes_real_frames(encoder):
  model = ConformerCTC(num_outputs=11, encoder=encoder, lstm_layers=1, lstm_hidden=16, **SMALL)
  alone, length = _audio([9000], 9000)
  variables = _init(model, alone, length)
  expected, _ = _apply(model, variables, alone, length)
  padded = jnp.concatenate([jnp.pad(alone, ((0, 0), (0, 3000))), _audio([12000], 12000)[0]])
  got, valid = _apply(model, variables, padded, jnp.array([9000, 12000], jnp.int32))
  assert int(valid[0].sum()) == expected.shape[1] == 14
  np.testing.assert_allclose(got[0, :14], expected[0], atol=2e-5, rtol=2e-5)


@pytest.mark.slow  # CI's budget
def test_scanned_and_unrolled_layers_agree():
  x, lengths = _audio([8000, 6000], 8000)
  scanned = ConformerCTC(num_outputs=7, scan_layers=True, **SMALL)
  unrolled = ConformerCTC(num_outputs=7, scan_layers=False, remat='full', **SMALL)
  params = nn.meta.unbox(_init(scanned, x, lengths)['params'])
  layers = params.pop('layers')
  for i in range(SMALL['num_layers']):
    params[f'layer_{i}'] = jax.tree.map(lambda a, i=i: a[i], layers)
  assert _count(_init(unrolled, x, lengths)) == sum(a.size for a in jax.tree.leaves(params))
  a = _apply(scanned, {'params': {**params, 'layers': layers}}, x, lengths)[0]
  b = _apply(unrolled, {'params': {k: v for k, v in params.items() if k != 'layers'}}, x, lengths)[0]
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # CI's budget
def test_spec_augment_only_in_training():
  model = ConformerCTC(num_outputs=7, **SMALL)
  x, lengths = _audio([8000, 6000], 8000)
  variables = _init(model, x, lengths)
  run = jax.jit(lambda key, augment: model.clone(spec_augment=augment).apply(
      variables, x, lengths, train=True, rngs={'augment': key})[0], static_argnums=1)
  one, two = jax.random.key(1), jax.random.key(2)
  assert not np.allclose(run(one, True), run(two, True))
  np.testing.assert_array_equal(run(one, True), run(one, True))  # a function of the key
  eval_logits = _apply(model, variables, x, lengths)[0]
  np.testing.assert_allclose(run(one, False), eval_logits, atol=1e-6)


@pytest.mark.slow  # CI's budget
def test_global_normalization_keeps_running_statistics():
  model = ConformerCTC(num_outputs=7, normalize='global', **SMALL)
  x, lengths = _audio([8000, 6000], 8000)
  variables = _init(model, x, lengths)
  stats = variables['batch_stats']['global_norm']
  assert stats['mean'].shape == (40,)
  _, updates = _apply(model, variables, x, lengths, train=True, mutable='batch_stats',
                           rngs={'augment': jax.random.key(0)})
  assert not np.allclose(updates['batch_stats']['global_norm']['mean'], stats['mean'])


@pytest.mark.slow  # CI's budget
def test_ctc_gradients_are_finite():
  model = ConformerCTC(num_outputs=7, **{**SMALL, 'dropout': 0.1, 'num_layers': 1})
  x, lengths = _audio([8000, 6000], 8000)
  params = _init(model, x, lengths)['params']
  labels = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])

  def loss(params):
    logits, valid = model.apply({'params': params}, x, lengths, train=True,
                                rngs={'augment': jax.random.key(1), 'dropout': jax.random.key(2)})
    paddings = (~valid).astype(jnp.float32), (labels == 0).astype(jnp.float32)
    return optax.ctc_loss(logits, paddings[0], labels, paddings[1]).mean()

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  leaves = jax.tree.leaves(nn.meta.unbox(grads))
  assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_sizes():
  x, lengths = _audio([16000], 16000)
  counts = {name: _count(jax.eval_shape(lambda s=size: _init(ConformerCTC(num_outputs=29, **s), x, lengths)))
            for name, size in SIZES.items()}
  assert 2.0e6 < counts['tiny'] < 2.3e6, counts
  # Conformer-S's encoder: the paper's 10.3M also holds its one-layer LSTM decoder (CTC has none).
  assert 8.0e6 < counts['small'] < 9.0e6, counts


def test_bad_choice_is_a_config_error():
  x, lengths = _audio([16000], 16000)
  with pytest.raises(ConfigError, match='encoder'):
    _init(ConformerCTC(num_outputs=7, encoder='rnn', **SMALL), x, lengths)


def test_the_cpu_depthwise_convolution_equals_the_grouped_convolution():
  """bigjax.cpu.depthwise's shifted sums (CPU) against the lax.conv accelerators run, odd and even kernels."""
  from bigjax.cpu import depthwise  # noqa: PLC0415
  x = jax.random.normal(jax.random.key(0), (2, 40, 6))
  for k in (15, 32):
    kernel = jax.random.normal(jax.random.key(k), (k, 1, 6))
    before = (k - 1) // 2
    reference = jax.lax.conv_general_dilated(x, kernel, (1,), [(before, k - 1 - before)],
                                             dimension_numbers=('NWC', 'WIO', 'NWC'), feature_group_count=6)
    np.testing.assert_allclose(depthwise.conv1d(x, kernel), reference, rtol=1e-5, atol=1e-5)
