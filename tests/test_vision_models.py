"""Vision models: the ViT (shapes, scan, patch embedding, named sizes) and the ResNets (ResNet-50's
size, zero-initialised residual branches, the CIFAR variant unchanged)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigjax import flops, models
from bigjax.config import LOGICAL_RULES, ConfigError, base_config
from bigjax.models import cnn, vit
from helpers import build_model

TINY_VIT = {'patch_size': 2, 'd_model': 16, 'num_layers': 2, 'num_heads': 2, 'mlp_ratio': 2.0}


def _normal(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _num_params(model, shape) -> int:
  """Counted from shapes alone: no big model is ever initialised."""
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(variables['params'])))


def _random_params(model, x):
  """(boxed abstract params, random params) of model for inputs x. Init's shapes come from
  eval_shape: XLA:CPU takes seconds to compile an init's many random draws, an apply far less."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  rng = np.random.default_rng(0)
  return boxed, jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), nn.meta.unbox(boxed))


@pytest.mark.parametrize('classifier, positions', [('token', 'learned'), ('gap', 'sincos2d')])
def test_vit_logits_and_annotations(classifier, positions):
  model = build_model('vit', **TINY_VIT, classifier=classifier, positions=positions)
  x = _normal(1, (3, 8, 6, 2))  # not square: rows and columns stay apart
  boxed, params = _random_params(model, x)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  known = {name for name, _ in LOGICAL_RULES}
  assert all(isinstance(v, nn.LogicallyPartitioned) and len(v.names) == v.value.ndim for v in leaves)
  assert all(set(v.names) - {None} and set(v.names) - {None} <= known for v in leaves)
  assert ('class_token' in params) == (classifier == 'token')
  assert ('position_embed' in params) == (positions == 'learned')  # sincos2d is fixed, not trained
  apply = jax.jit(lambda x: model.apply({'params': params}, x))
  logits = apply(x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  # Each example's logits are its own, and depend on where each pixel is.
  np.testing.assert_allclose(apply(x[::-1]), logits[::-1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(apply(x[:, ::-1]), logits, atol=1e-3)


def test_vit_scanned_and_unscanned_layers_compute_the_same():
  x = _normal(1, (2, 8, 8, 1))
  scanned, unscanned = (build_model('vit', **TINY_VIT, scan_layers=s) for s in (True, False))
  _, params = _random_params(scanned, x)
  layers = params.pop('layers')  # every leaf stacked over the layers
  per_layer = {**params, **{f'layer_{i}': jax.tree.map(lambda a, i=i: a[i], layers) for i in range(2)}}
  _, unscanned_params = _random_params(unscanned, x)
  assert jax.tree.structure(per_layer) == jax.tree.structure(unscanned_params)
  np.testing.assert_allclose(jax.jit(unscanned.apply)({'params': per_layer}, x),
                             jax.jit(scanned.apply)({'params': {**params, 'layers': layers}}, x),
                             rtol=1e-5, atol=1e-5)


def test_vit_attention_weights_reach_intermediates_in_both_layer_layouts():
  """Attention rollout (bigjax/explain.py) reads the weights each layer sows: scanned, they come
  stacked over the layers."""
  x = jnp.zeros((3, 8, 8, 1))
  for scan, expected in ((True, [(2, 3, 2, 17, 17)]), (False, [(3, 2, 17, 17)] * 2)):
    model = build_model('vit', **TINY_VIT, scan_layers=scan)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    _, state = jax.eval_shape(lambda v, model=model: model.apply(v, x, mutable=['intermediates']), variables)
    assert [a.shape for a in jax.tree.leaves(state)] == expected


def test_patch_embedding_is_the_strided_conv():
  images = _normal(0, (2, 8, 12, 3))
  kernel = _normal(1, (4, 4, 3, 5))
  conv = jax.lax.conv_general_dilated(images, kernel, (4, 4), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # (2, 2, 3, 5)
  ours = vit.patches(images, 4) @ kernel.reshape(-1, 5)
  np.testing.assert_allclose(ours, conv.reshape(2, 6, 5), rtol=1e-5, atol=1e-5)


def test_sincos2d_positions_are_distinct_and_fixed():
  table = vit.sincos2d(4, 3, 16)[0]
  assert table.shape == (12, 16)
  distances = np.linalg.norm(table[:, None] - table[None], axis=-1)
  assert distances[~np.eye(12, dtype=bool)].min() > 0.1  # every patch position is told apart
  # Row 0, column 1 and row 1, column 0 differ only in which quarters move.
  np.testing.assert_allclose(table[1, 8:], table[0, 8:])
  np.testing.assert_allclose(table[3, :8], table[0, :8])


def test_named_sizes_have_the_literature_parameter_counts():
  # ViT-B/16 at 224 x 224, 1,000 classes: the paper's 86,567,656 less the blocks' projection
  # biases (bigjax's Transformer has none: 12 x 6,912) and the class token's position (768).
  assert _num_params(vit.ViT(1000, **vit.SIZES['B/16']), (1, 224, 224, 3)) == 86_567_656 - 82_944 - 768
  resnet50 = cnn.ResNet(1000, stage_sizes=(3, 4, 6, 3), width=64, block='bottleneck', stem='imagenet')
  assert _num_params(resnet50, (1, 64, 64, 3)) == 25_557_032  # torchvision's resnet50, exactly


def test_zero_init_residual_starts_a_bottleneck_block_as_its_shortcut():
  x = _normal(0, (2, 4, 4, 16))
  block = cnn.BottleneckBlock(4, 1)  # 4 x 4 = 16 channels out, stride 1: the identity shortcut
  variables = nn.meta.unbox(jax.jit(functools.partial(block.init, train=False))(jax.random.key(1), x))
  apply = jax.jit(lambda params: block.apply({**variables, 'params': params}, x, train=False))
  params = variables['params']
  np.testing.assert_array_equal(params['bn_3']['scale'], 0.0)
  np.testing.assert_array_equal(apply(params), nn.relu(x))  # fresh: relu(0 + x)
  # Whatever the rest of the residual branch holds, a zero last scale keeps it out.
  branch = ('conv_1', 'bn_1', 'conv_2', 'bn_2', 'conv_3')
  moved = {k: jax.tree.map(lambda a: a + 1.0, v) if k in branch else v for k, v in params.items()}
  np.testing.assert_array_equal(apply(moved), nn.relu(x))
  ones = {**params, 'bn_3': {**params['bn_3'], 'scale': jnp.ones(16)}}  # the init without zero_init
  assert not np.allclose(apply(ones), nn.relu(x))


def _blocks_zero_init(model, x) -> set:
  """(block class, zero_init) of every residual block model builds, from shapes alone."""
  seen = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, tuple(cnn.BLOCKS.values())) and context.method_name == '__call__':
      seen.add((type(context.module).__name__, context.module.zero_init))
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), x)
  return seen


def test_resnet_zero_init_defaults_to_the_block_kind():
  x = jnp.zeros((1, 32, 32, 3))
  basic = build_model('resnet', stage_sizes=(1, 1), width=8)
  assert _blocks_zero_init(basic, x) == {('ResidualBlock', False)}
  bottleneck = build_model('resnet', stage_sizes=(1, 1), width=8, block='bottleneck', stem='imagenet')
  assert _blocks_zero_init(bottleneck, x) == {('BottleneckBlock', True)}
  for block in cnn.BLOCKS:
    for zero_init in (True, False):
      model = build_model('resnet', stage_sizes=(1,), width=8, block=block, zero_init_residual=zero_init)
      assert {z for _, z in _blocks_zero_init(model, x)} == {zero_init}
  # The ImageNet stem quarters the image before the first stage: 32 -> 16 (conv) -> 8 (max pool).
  shapes = []

  def record(next_fun, args, kwargs, context):
    if context.module.name == 'stage0_block0':
      shapes.append(args[0].shape)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    logits = jax.eval_shape(lambda: bottleneck.init_with_output(jax.random.key(0), x)[0])
  assert shapes == [(1, 8, 8, 8)] and logits.shape == (1, 10)


def test_cifar_resnet_parameters_are_unchanged():
  """The CIFAR ResNet's defaults keep the parameter tree older checkpoints hold."""
  model = build_model('resnet', stage_sizes=(1, 1), width=8)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  shapes = {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(variables['params']))}
  bn = lambda name, n: {f"['{name}']['scale']": (n,), f"['{name}']['bias']": (n,)}
  block = lambda name, n_in, n: {
      f"['{name}']['conv_1']['kernel']": (3, 3, n_in, n), f"['{name}']['conv_2']['kernel']": (3, 3, n, n),
      **{f"['{name}']{k}": v for k, v in {**bn('bn_1', n), **bn('bn_2', n)}.items()}}
  expected = {"['stem']['kernel']": (3, 3, 1, 8), **bn('bn_stem', 8), **block('stage0_block0', 8, 8),
              **block('stage1_block0', 8, 16), "['stage1_block0']['proj']['kernel']": (1, 1, 8, 16),
              **{f"['stage1_block0']{k}": v for k, v in bn('bn_proj', 16).items()},
              "['head']['kernel']": (16, 10), "['head']['bias']": (10,)}
  assert shapes == expected


@pytest.mark.parametrize('name, field, value', [
    ('vit', 'classifier', 'pool'), ('vit', 'positions', 'rope'), ('resnet', 'stem', 'big'),
    ('resnet', 'block', 'wide')])
def test_bad_vision_choices_are_config_errors(name, field, value):
  c = base_config().model
  c.name = name
  c[field] = value
  with pytest.raises(ConfigError, match=f'model.{field}'):
    models.check_config(c)


def test_patch_size_must_divide_the_image():
  model = build_model('vit', **{**TINY_VIT, 'patch_size': 3})
  with pytest.raises(ConfigError, match='model.patch_size'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))


def test_vit_model_flops_are_xlas_count_of_the_forward_pass_times_three():
  """flops.vit_flops_per_example counts a train step as 3 forward passes; XLA counts one unscanned
  forward pass (the matmuls, and the elementwise work the formula leaves out: a few percent here)."""
  config = ml_collections.ConfigDict({'name': 'vit', 'patch_size': 4, 'd_model': 128, 'num_layers': 2,
                                      'num_heads': 4, 'classifier': 'token', 'scan_layers': False})
  model = models.build(config, 10)
  images = jnp.zeros((4, 16, 16, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  compiled = jax.jit(model.apply).lower(params, images).compile()
  xla = flops.xla_flops(compiled)
  ours = models.flops_per_example(config, num_params, images.shape[1:]) * images.shape[0] / 3
  assert abs(ours - xla) / xla < 0.05, (ours, xla)
