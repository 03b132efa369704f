"""bigjax/export_tf.py: a StableHLO export as a SavedModel that TensorFlow loads and runs as JAX does.

TensorFlow is not in requirements.txt; these tests run where requirements-export.txt is installed:
  python -m venv --system-site-packages ENV && ENV/bin/pip install -r requirements-export.txt
  ENV/bin/python -m pytest tests/test_export_tf.py
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import export_tf
from bigjax.config import ConfigError

# Checked before any fixture runs: where TensorFlow is absent, no run is trained for nothing.
needs_tf = pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None, reason=(
    'TensorFlow is not installed: pip install -r requirements-export.txt to test the SavedModel export'))


def _toy_export(path, platforms=('cpu',)) -> list:
  """An export folder as bigjax.export writes it: a two-input function with a symbolic batch and
  length, its params (a bfloat16 and an int4 one among them, stored as unsigned integers of their
  width, as a quantized model's are), metadata.json and a tokenizer file. Returns the params."""
  rng = np.random.default_rng(0)
  params = [rng.normal(size=(4, 8)).astype(jnp.bfloat16), rng.normal(size=(8,)).astype(np.float32),
            rng.integers(-8, 8, (16, 8)).astype(jnp.int4)]

  def scores(params, features, tokens):
    w, b, embed = params
    hidden = jnp.tanh(features @ w.astype(jnp.float32) + b) + embed[tokens].astype(jnp.float32).mean(axis=1)
    return {'probabilities': jax.nn.softmax(hidden), 'best': jnp.argmax(hidden, axis=-1).astype(jnp.int32)}

  b, t = jax.export.symbolic_shape('b, t')
  exported = jax.export.export(jax.jit(scores), platforms=platforms)(
      [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params],
      jax.ShapeDtypeStruct((b, 4), jnp.float32), jax.ShapeDtypeStruct((b, t), jnp.int32))
  os.makedirs(path)
  with open(os.path.join(path, 'function.stablehlo'), 'wb') as f:
    f.write(exported.serialize())
  np.savez(os.path.join(path, 'params.npz'),
           **{f'{i:05d}': p.view(f'uint{8 * p.dtype.itemsize}') for i, p in enumerate(params)})
  meta = {'task': 'generate', 'inputs': [{'name': 'features', 'shape': ['b', 4], 'dtype': 'float32'},
                                         {'name': 'tokens', 'shape': ['b', 't'], 'dtype': 'int32'}],
          'params': {'dtypes': [p.dtype.name for p in params]}}
  with open(os.path.join(path, 'metadata.json'), 'w') as f:
    json.dump(meta, f)
  with open(os.path.join(path, 'tokenizer'), 'w') as f:
    f.write('a tokenizer\n')
  return params


_RUN_SAVEDMODEL = """
import json, sys
import numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
with np.load(sys.argv[2]) as inputs:
  out = serve(**{k: tf.constant(inputs[k]) for k in inputs.files})
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


@needs_tf
def test_savedmodel_runs_in_tensorflow_as_in_jax(tmp_path):
  export_dir, out = str(tmp_path / 'export'), str(tmp_path / 'savedmodel')
  params = _toy_export(export_dir)
  result = export_tf.savedmodel(export_dir, out)
  assert result['path'] == out and result['max_abs_diff'] <= 1e-5
  assert {'saved_model.pb', 'variables', 'metadata.json', 'tokenizer'} <= set(os.listdir(out))
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no staging folder left

  # A fresh process with TensorFlow alone, at a batch and length the conversion never saw.
  rng = np.random.default_rng(1)
  features, tokens = rng.normal(size=(5, 4)).astype(np.float32), rng.integers(0, 16, (5, 11), np.int32)
  np.savez(tmp_path / 'inputs.npz', features=features, tokens=tokens)
  run = subprocess.run([sys.executable, '-c', _RUN_SAVEDMODEL, out, str(tmp_path / 'inputs.npz')],
                       capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  exported = jax.export.deserialize(bytearray((tmp_path / 'export' / 'function.stablehlo').read_bytes()))
  expected = exported.call(params, features, tokens)
  np.testing.assert_allclose(np.array(got['probabilities']), expected['probabilities'], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(np.array(got['best']), expected['best'])


@needs_tf
def test_stablehlo_newer_than_tensorflow_s_is_written_at_its_version(tmp_path):
  """jax.lax.top_k lowers to a composite op of a StableHLO version TensorFlow 2.21 cannot read."""
  path = tmp_path / 'export'
  exported = jax.export.export(jax.jit(lambda params, x: jax.lax.top_k(x * params[0], 3)[0]))(
      [jax.ShapeDtypeStruct((6,), jnp.float32)], jax.ShapeDtypeStruct((2, 6), jnp.float32))
  path.mkdir()
  (path / 'function.stablehlo').write_bytes(exported.serialize())
  np.savez(path / 'params.npz', w=np.arange(6, dtype=np.float32))
  (path / 'metadata.json').write_text(json.dumps({
      'task': 'generate', 'inputs': [{'name': 'x', 'shape': [2, 6], 'dtype': 'float32'}],
      'params': {'dtypes': ['float32']}}))
  assert export_tf.savedmodel(str(path), str(tmp_path / 'savedmodel'))['max_abs_diff'] == 0.0


@needs_tf
def test_savedmodel_refused_leaves_nothing(tmp_path, monkeypatch):
  export_dir, out = str(tmp_path / 'export'), str(tmp_path / 'savedmodel')
  _toy_export(export_dir)
  monkeypatch.setattr(export_tf, 'TOLERANCE', -1.0)  # any difference, even 0, is too much
  with pytest.raises(ValueError, match='refused'):
    export_tf.savedmodel(export_dir, out)
  assert sorted(os.listdir(tmp_path)) == ['export']


@needs_tf
def test_export_without_cpu_is_refused(tmp_path):
  _toy_export(str(tmp_path / 'export'), platforms=('tpu',))
  with pytest.raises(ConfigError, match='cpu platform'):
    export_tf.savedmodel(str(tmp_path / 'export'), str(tmp_path / 'savedmodel'))
  assert sorted(os.listdir(tmp_path)) == ['export']


def test_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # import tensorflow fails, as where it is absent
  with pytest.raises(ConfigError, match='pip install -r requirements-export.txt'):
    export_tf.savedmodel(str(tmp_path / 'export'), str(tmp_path / 'savedmodel'))
  assert not os.path.exists(tmp_path / 'savedmodel')


@needs_tf
def test_export_command_writes_a_savedmodel_of_a_trained_cnn(data_dir, tmp_path):
  """python -m bigjax.export --format=savedmodel end to end: a digits CNN trained a few steps."""
  import tensorflow as tf  # noqa: PLC0415 (present: needs_tf)

  from bigjax import train  # noqa: PLC0415
  from bigjax.serving import load  # noqa: PLC0415
  from helpers import REPO, load_script  # noqa: PLC0415
  config = load_script(os.path.join(REPO, 'experiments', 'digits_cnn.py')).get_config()
  config.data.data_dir = data_dir
  config.train.update({'steps': 4, 'eval_every': 4})
  config.checkpoint.every = 4
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'export')
  train.train_and_evaluate(config, workdir)
  run = subprocess.run([sys.executable, '-m', 'bigjax.export', f'--workdir={workdir}', '--format=savedmodel',
                        f'--out={out}'], capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  path = json.loads(run.stdout.strip().splitlines()[-1])['path']
  assert path == os.path.join(out, 'savedmodel')

  images = np.random.default_rng(2).normal(size=(3, 8, 8, 1)).astype(np.float32)
  serve = tf.saved_model.load(path).signatures['serving_default']
  got = serve(inputs=tf.constant(images))['probabilities'].numpy()
  expected = load.load(os.path.join(out, 'stablehlo')).call(images)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  with open(os.path.join(path, 'metadata.json')) as f:
    assert json.load(f)['task'] == 'classify'
