"""Quantization with qwix: PTQ outputs near the float model's, QAT that keeps the float params, and the
`python -m bigjax.quantize` command: its refusals, its folder, and --mode=eval of that folder."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
import qwix

from bigjax import quant_eval, quantize
from bigjax.config import ConfigError, base_config
from bigjax.models.cnn import LeNet
from bigjax.models.transformer import TransformerLM
from helpers import REPO, run_main, tree_listing

# Relative L2 error of the logits bounded per mode (per-channel absmax scales on a random init
# measure about 0.02, 0.01 and 0.15).
BOUNDS = {'int8': 0.05, 'int8_weights': 0.03, 'int4_weights': 0.3}
KEY = jax.random.key(0)
IMAGES = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
TOKENS = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)


def _float(model, inputs):
  params = nn.meta.unbox(model.init({'params': KEY}, inputs, train=False)['params'])
  return params, model.apply({'params': params}, inputs, train=False)


def _ptq(model, params, inputs, mode):
  """(quantized params, the PTQ model's outputs), through quantize's rules."""
  ptq = quantize.ptq_model(model, mode)
  abstract = jax.eval_shape(lambda: ptq.init({'params': KEY}, inputs, train=False))['params']
  quantized = quantize.quantize_params(params, abstract)
  return quantized, _jit_apply(ptq, quantized, inputs)


def _jit_apply(model, params, inputs):
  return jax.jit(lambda p: model.apply({'params': p}, inputs, train=False))(params)


def _error(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _qtypes(tree) -> set:
  return {str(leaf.dtype) for leaf in jax.tree.leaves(tree)}


def test_ptq_logits_stay_within_the_quantization_error():
  model = LeNet(num_outputs=10, features=(8, 16), hidden=32)
  params, reference = _float(model, IMAGES)
  for mode, qtype in (('int8', 'int8'), ('int8_weights', 'int8'), ('int4_weights', 'int4')):
    quantized, outputs = _ptq(model, params, IMAGES, mode)
    assert 1e-4 < _error(outputs, reference) < BOUNDS[mode], mode
    assert qtype in _qtypes(quantized['hidden'])
    # Weight-only modes leave convolutions float: qwix's PTQ convolution quantizes its input too.
    assert (_qtypes(quantized['conv_0']) == {'float32'}) == (mode != 'int8'), mode


@pytest.mark.slow
def test_a_scanned_transformer_quantizes_its_mlps_layer_by_layer_and_keeps_attention_float():
  model = TransformerLM(num_outputs=64, num_layers=2, d_model=32, num_heads=4, scan_layers=True, remat='dots')
  params, reference = _float(model, TOKENS)
  quantized, outputs = _ptq(model, params, TOKENS, 'int8')
  assert 1e-4 < _error(outputs, reference) < BOUNDS['int8']
  up = quantized['layers']['mlp']['up']['kernel'].array
  assert up.qvalue.dtype == jnp.int8 and up.scale.shape == (2, 1, 128)  # each layer its own scales
  assert _qtypes(quantized['layers']['attention']) == _qtypes(quantized['embed']) == {'float32'}


def test_qat_keeps_the_float_params_and_rounds_the_outputs():
  model = LeNet(num_outputs=10, features=(8, 16), hidden=32)
  params, reference = _float(model, IMAGES)
  qat = quantize.for_training(model, 'int8')
  qat_params = jax.eval_shape(lambda: nn.meta.unbox(qat.init({'params': KEY}, IMAGES, train=False)['params']))
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
  assert shapes(qat_params) == shapes(params)
  outputs = _jit_apply(qat, params, IMAGES)
  assert 1e-4 < _error(outputs, reference) < BOUNDS['int8']
  # Straight-through: the gradient reaches every float parameter.
  grads = jax.jit(jax.grad(lambda p: qat.apply({'params': p}, IMAGES, train=False).sum()))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  assert quantize.for_training(model, '') is model


def test_an_unknown_mode_is_a_config_error():
  config = base_config()
  quantize.check_config(config.quant)
  config.quant.mode = 'int3'
  with pytest.raises(ConfigError, match='config.quant.mode'):
    quantize.check_config(config.quant)


def _quantize_command(*args):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'bigjax.quantize', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_run_without_a_checkpoint_is_one_line_and_exit_2(tmp_path):
  config = base_config()
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  before = tree_listing(tmp_path)
  result = _quantize_command(f'--workdir={tmp_path}', '--mode=int8')
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('bigjax: error:')]
  assert len(lines) == 1 and 'no checkpoints' in lines[0], result.stderr[-2000:]
  assert tree_listing(tmp_path) == before


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """A small digits MLP, trained a few steps: a run to quantize."""
  from bigjax import train  # noqa: PLC0415
  workdir = str(tmp_path_factory.mktemp('float'))
  c = base_config()
  c.data.data_dir = data_dir
  c.model.update({'depth': 1, 'width': 256})
  c.train.update({'steps': 20, 'batch_size': 64, 'eval_every': 0, 'log_every': 10})
  train.train_and_evaluate(c, workdir)
  return workdir


@pytest.mark.slow
def test_the_quantized_folder_evaluates_as_the_command_printed(trained):
  lines = quant_eval.export(trained, ['int8', 'int4_weights'], calibration_batches=2, rounds=2)
  assert [(line['mode'], line['split']) for line in lines] == [
      ('int8', 'eval'), ('int8', 'test'), ('int4_weights', 'eval'), ('int4_weights', 'test')]
  assert sorted(os.listdir(os.path.join(trained, 'quantized'))) == ['int4_weights', 'int8']  # no staging left
  folder = os.path.join(trained, 'quantized', 'int8')
  assert sorted(os.listdir(folder)) == ['config.json', 'params', 'quantized.json']
  info = json.loads(open(os.path.join(folder, 'quantized.json')).read())
  assert info['mode'] == 'int8' and info['calibration_batches'] == 2 and info['step'] == 20
  assert info['size_ratio'] == info['size_bytes'] / info['float32_size_bytes'] < 0.4
  assert info['array_ratio'] < 0.35  # 19 k params: a few hundred bytes of scales and metadata count
  int4 = json.loads(open(os.path.join(trained, 'quantized', 'int4_weights', 'quantized.json')).read())
  assert int4['calibration_batches'] == 0 and int4['size_bytes'] < info['size_bytes']
  assert int4['float32_size_bytes'] == info['float32_size_bytes']  # one float model for both
  lines = lines[:2]
  for line in lines:
    assert line['size_ratio'] == info['size_ratio']
    assert abs(line['accuracy'] - line['float']['accuracy']) <= 0.02  # within a few of 360 examples
  assert lines[0]['examples_per_s'] > 0 and 'examples_per_s' not in lines[1]  # the eval split is timed
  result = run_main('--mode=eval', f'--workdir={folder}')  # no --config: the folder's config.json
  assert result.returncode == 0, result.stderr[-3000:]
  evaluated = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  keys = set(evaluated[0]) - {'step', 'split'}
  extra = {'split', 'mode', 'step', 'float', 'size_bytes', 'float32_size_bytes', 'size_ratio', 'array_bytes',
           'float32_array_bytes', 'array_ratio', 'examples_per_s', 'float_examples_per_s'}
  assert keys and keys == set(lines[0]) - extra
  for printed, again in zip(lines, evaluated):
    assert again['split'] == printed['split'] and again['step'] == printed['step']
    assert {k: again[k] for k in keys} == {k: printed[k] for k in keys}


@pytest.mark.parametrize('mode, bits', [('int8', 8), ('int4_weights', 4)])
def test_arrays_qwix_leaves_float_are_stored_rounded_to_the_modes_type(mode, bits):
  table = jax.random.normal(jax.random.key(0), (50, 16))
  params = {'embed': {'embedding': table}, 'norm': {'scale': jnp.ones(16)}}
  stored = quantize.pack(params, mode)
  assert isinstance(stored['embed']['embedding'], qwix.QArray)
  assert stored['norm']['scale'] is params['norm']['scale']
  back = quantize.unpack(stored)['embed']['embedding']
  # One scale per row: each number within half a step of that row's absmax / (2^(bits-1) - 1).
  step = jnp.abs(table).max(-1, keepdims=True) / (2 ** (bits - 1) - 1)
  error = jnp.abs(back - table)
  assert bool((error <= step / 2 + 1e-6).all()) and float(error.max()) > 0


def test_a_quantized_folder_holds_one_array_per_dtype_and_reads_back_the_same_bits(tmp_path):
  """Orbax's per-array metadata would otherwise be a quarter of a small int4 model's folder."""
  params = quantize.pack({'embed': {'embedding': jax.random.normal(jax.random.key(0), (50, 16))},
                          'dense': {'kernel': jax.random.normal(jax.random.key(1), (16, 8)),
                                    'bias': jnp.arange(8.0), 'scale': jnp.ones(3, jnp.bfloat16)}},
                         'int4_weights')
  model_state = {'batch_stats': {'mean': jnp.arange(4.0)}}
  path = str(tmp_path / 'params')
  quant_eval.save(path, params, model_state)
  stored = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  assert {name: (a.shape, str(a.dtype)) for name, a in stored.items()} == {
      'int4': ((50 * 16 + 16 * 8,), 'int4'), 'float32': ((50 + 16 + 8 + 4,), 'float32'),
      'bfloat16': ((3,), 'bfloat16')}
  like = jax.eval_shape(lambda: {'params': params, 'model_state': model_state})
  back = quant_eval._unbundle(ocp.StandardCheckpointer().restore(path), like)
  want = {'params': params, 'model_state': model_state}
  assert jax.tree.structure(back) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(want), strict=True):
    assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())


def test_restore_reads_the_one_array_layout_and_refuses_the_older_per_leaf_one(tmp_path):
  """quant_eval.restore: the current layout comes back bit for bit; a folder written before it, one
  Orbax array per leaf, is one line asking to quantize again, not Orbax's tree-mismatch traceback."""
  float_params = {'dense': {'kernel': jax.random.normal(KEY, (16, 8)), 'bias': jnp.arange(8.0)}}
  params = quantize.pack(float_params, 'int8_weights')
  qs = types.SimpleNamespace(mesh=jax.sharding.Mesh(jax.devices()[:1], ('data',)))
  restore = lambda path: quant_eval.restore(path, qs, jax.eval_shape(lambda: float_params), {},  # noqa: E731
                                            'int8_weights')
  quant_eval.save(str(tmp_path / 'current'), params, {})
  back = restore(str(tmp_path / 'current'))['params']
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(quantize.unpack(params)), strict=True):
    assert a.dtype == b.dtype and bool((a == b).all())
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / 'older'), {'params': params, 'model_state': {}})
  with pytest.raises(ConfigError, match=r'older bigjax, an array per leaf: quantize the run again'):
    restore(str(tmp_path / 'older'))


def _family(name):
  """(model, keyword inputs) of each model family's small version."""
  from bigjax.models.conformer import ConformerCTC  # noqa: PLC0415
  from bigjax.models.seq2seq import TransformerSeq2Seq  # noqa: PLC0415
  from bigjax.models.vit import ViT  # noqa: PLC0415
  audio = jax.random.randint(KEY, (2, 4000), -3000, 3000).astype(jnp.int16)
  return {
      'seq2seq': (TransformerSeq2Seq(50, num_layers=1, d_model=32, num_heads=4, dropout=0.0, pointer=True),
                  {'inputs': TOKENS % 50, 'targets': TOKENS[:, :8] % 50}),
      'conformer': (ConformerCTC(num_outputs=30, d_model=32, num_layers=1, num_heads=4, subsample_channels=8,
                                 conv_kernel=3, n_mels=16),
                    {'inputs': audio, 'lengths': jnp.array([4000, 3000])}),
      'vit': (ViT(num_outputs=10, patch_size=4, d_model=32, num_layers=1, num_heads=4), {'inputs': IMAGES}),
  }[name]


@pytest.mark.slow
@pytest.mark.parametrize('family', ['seq2seq', 'conformer', 'vit'])
def test_every_model_family_quantizes_stores_and_trains_quantized(family):
  model, inputs = _family(family)
  keys = dict.fromkeys(('params', 'dropout', 'augment'), KEY)
  variables = nn.meta.unbox(model.init(keys, **inputs, train=False))
  first = lambda outputs: jax.tree.leaves(outputs)[0]  # noqa: E731 (CTC: (logits, valid))
  reference = first(model.apply(variables, **inputs, train=False))
  ptq = quantize.ptq_model(model, 'int8')
  abstract = jax.eval_shape(lambda: ptq.init(keys, **inputs, train=False))['params']
  params = quantize.unpack(quantize.pack(quantize.quantize_params(variables['params'], abstract), 'int8'))
  outputs = ptq.apply({**variables, 'params': params}, **inputs, train=False)
  assert 1e-4 < _error(first(outputs), reference) < 0.05
  qat = quantize.for_training(model, 'int8')
  assert 1e-4 < _error(first(qat.apply(variables, **inputs, train=False)), reference) < 0.05
