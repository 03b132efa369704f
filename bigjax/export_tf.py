"""A StableHLO export as a TensorFlow SavedModel, for TensorFlow Serving, through jax2tf.

  pip install -r requirements-export.txt
  python -m bigjax.export --workdir=RUN --format=savedmodel [--out=DIR]

The export's own StableHLO runs inside the SavedModel (jax2tf native serialization: one XlaCallModule
op), so TensorFlow computes what JAX computes; the params become variables, and the serving signature
takes the export's inputs by name with a free batch (and length) dimension. The SavedModel is reloaded
with TensorFlow and refused if its outputs differ from the JAX export's by more than 1e-5.
"""

import contextlib
import os
import shutil
import tempfile
from unittest import mock

import jax
import jax.extend
import numpy as np

from bigjax.config import ConfigError

TOLERANCE = 1e-5
_NARROW = {'int4': np.int8, 'uint4': np.uint8, 'int2': np.int8, 'uint2': np.uint8}
_EXPORT_FILES = ('function.stablehlo', 'params.npz')  # replaced by the SavedModel; the rest is copied


def savedmodel(export_dir: str, out_dir: str) -> dict:
  """Writes the SavedModel of the export in `export_dir` to `out_dir` (with metadata.json and the
  tokenizer beside it) and returns {'path', 'max_abs_diff'}. Raises ConfigError (a ValueError, one
  line), with nothing written, if TensorFlow cannot run it or differs from JAX by more than TOLERANCE;
  an older out_dir is replaced only by a SavedModel that passed."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise ConfigError(f'--format=savedmodel needs TensorFlow ({e}): pip install -r requirements-export.txt'
                      ) from None
  from bigjax.serving import load
  loaded = load.load(export_dir)
  exported, params, metadata = loaded.exported, loaded.params, loaded.metadata
  if 'cpu' not in exported.platforms:
    raise ConfigError(f'the export runs on {exported.platforms} only; TensorFlow checks it on the CPU: '
                      f'export again with the cpu platform included')
  out_dir = os.path.abspath(out_dir)
  input_avals = exported.in_avals[len(params):]
  names = _input_names(metadata, len(input_avals))
  inputs = _example_inputs(input_avals)
  cpu = jax.devices('cpu')[0]  # the reference on the device TensorFlow runs it on, with the same XLA
  expected = _named_outputs(exported.call(jax.device_put(params, cpu), *jax.device_put(inputs, cpu)),
                            metadata)

  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.savedmodel-', dir=os.path.dirname(out_dir))
  try:
    # Shapes as the export declares them: a symbolic dimension is free in TensorFlow too.
    polymorphic = [None] + [', '.join(str(d) for d in aval.shape) for aval in input_avals]
    # Lowered for every platform the export carries: the SavedModel runs where the export runs.
    call_tf = jax2tf.convert(_narrowing(exported.call, params), polymorphic_shapes=polymorphic,
                             with_gradient=False, native_serialization_platforms=tuple(exported.platforms))
    module = tf.Module()
    # Variables, not constants folded into the graph: a large model stays under the 2 GB protobuf limit.
    module.params = [tf.Variable(_widened(p), trainable=False, name=f'param_{i}')
                     for i, p in enumerate(params)]
    signature = [tf.TensorSpec([d if isinstance(d, int) else None for d in aval.shape], aval.dtype.name,
                               name=name) for aval, name in zip(input_avals, names)]

    @tf.function(input_signature=signature, autograph=False)
    def serve(*args):
      return _named_outputs(call_tf(list(module.params), *args), metadata)

    module.serve = serve
    with _stablehlo_that_tensorflow_reads():  # serve is traced, and the function serialized, here
      tf.saved_model.save(module, staging, signatures={'serving_default': serve})
    for name in sorted(os.listdir(export_dir)):
      path = os.path.join(export_dir, name)
      if name not in _EXPORT_FILES and os.path.isfile(path):
        shutil.copy2(path, os.path.join(staging, name))

    reloaded = tf.saved_model.load(staging).signatures['serving_default']
    try:
      got = reloaded(**{name: tf.constant(x) for name, x in zip(names, inputs)})
    except tf.errors.OpError as e:  # its XlaCallModule cannot read or shape the function
      detail = next((line.strip() for line in str(e).splitlines() if ': error: ' in line), type(e).__name__)
      raise ConfigError(f'TensorFlow {tf.__version__} cannot run this export: {detail}') from None
    if set(got) != set(expected):
      raise ConfigError(f'the SavedModel returns {sorted(got)}, the export {sorted(expected)}')
    diff = max((_max_abs_diff(got[k].numpy(), expected[k]) for k in expected), default=0.0)
    if not diff <= TOLERANCE:  # NaN refuses too
      raise ConfigError(f'the SavedModel differs from the export by {diff:.3g} > {TOLERANCE:g}: refused')
    if os.path.exists(out_dir):  # a previous export of the run, replaced as export.py replaces its own
      shutil.rmtree(out_dir)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from a server run as another user
    os.rename(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return {'path': out_dir, 'max_abs_diff': diff}


@contextlib.contextmanager
def _stablehlo_that_tensorflow_reads():
  """jax.export writes StableHLO of the version of 4 weeks ago, which a TensorFlow built before this
  jax may not read ('unregistered operation vhlo.composite_v2' for a beam search's top_k). Meanwhile
  it writes TensorFlow's own version, to which VHLO converts what does not need newer ops."""
  from jax._src.export import _export  # the one place jax.export picks the version
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
  hlo = _export.hlo
  ours = hlo.get_version_from_compatibility_requirement(hlo.StablehloCompatibilityRequirement.WEEK_4)
  theirs = tf_stablehlo.get_current_version()
  if _version(theirs) >= _version(ours):
    yield
    return

  def to_bytecode(module):
    return jax.extend.mlir.serialize_portable_artifact(module, theirs, jax.extend.backend.get_backend()
                                                       .serialize_with_sdy)
  with mock.patch.object(_export, '_module_to_bytecode', to_bytecode):
    yield


def _version(text: str) -> tuple:
  return tuple(int(part) for part in text.split('.'))


def _widened(x: np.ndarray) -> np.ndarray:
  """4- and 2-bit params (a quantized model's) as 8-bit: TensorFlow's int4 tensors reach the XLA
  function with the wrong values, while the exact cast from int8 inside it is right."""
  if x.dtype.name in _NARROW:
    return x.astype(_NARROW[x.dtype.name])
  return x


def _narrowing(call, params):
  """call, taking the params as _widened stores them and narrowing them back to their own types."""
  dtypes = [p.dtype for p in params]

  def narrowed(params, *inputs):
    return call([p.astype(d) if p.dtype != d else p for p, d in zip(params, dtypes)], *inputs)
  return narrowed


def _input_names(metadata: dict, count: int) -> list[str]:
  names = [spec['name'] for spec in metadata.get('inputs', [])]
  return names if len(names) == count else [f'input_{i}' for i in range(count)]


def _example_inputs(avals) -> list[np.ndarray]:
  """A batch that exercises the function: token ids (signed integer inputs with a length axis) in
  3..200, past the special ids; every position valid (bool inputs); zeros elsewhere, which makes a
  sampler greedy (temperature 0). A symbolic batch is 4 and a symbolic length 8."""
  rng = np.random.default_rng(0)
  sizes = {}  # one size per symbolic dimension, the same in every input
  for aval in avals:
    for axis, d in enumerate(aval.shape):
      if not isinstance(d, int):
        sizes.setdefault(str(d), 4 if axis == 0 else 8)
  inputs = []
  for aval in avals:
    shape = [d if isinstance(d, int) else sizes[str(d)] for d in aval.shape]
    if aval.dtype == np.bool_:
      inputs.append(np.ones(shape, np.bool_))
    elif np.issubdtype(aval.dtype, np.signedinteger) and aval.ndim >= 2:
      inputs.append(rng.integers(3, 201, shape).astype(aval.dtype))
    else:
      inputs.append(np.zeros(shape, aval.dtype))
  return inputs


def _named_outputs(outputs, metadata: dict) -> dict:
  """A serving signature returns named tensors: the export's dict keys, else metadata's output names."""
  if isinstance(outputs, dict):
    return dict(outputs)
  leaves = jax.tree_util.tree_leaves(outputs)
  names = [spec['name'] if isinstance(spec, dict) else str(spec) for spec in metadata.get('outputs', [])]
  if len(names) != len(leaves):
    names = [f'output_{i}' for i in range(len(leaves))]
  return dict(zip(names, leaves))


def _max_abs_diff(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    return float('inf')
  if a.size == 0:
    return 0.0
  return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
