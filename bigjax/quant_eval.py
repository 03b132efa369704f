"""Post-training quantization of a trained run, and evaluation of the result (bigjax/quantize.py says
which layers are quantized and how).

  python -m bigjax.quantize --workdir=RUN --mode=int8   # export: writes RUN/quantized/int8
  python -m bigjax.main --mode=eval --workdir=RUN/quantized/int8

RUN/quantized/<mode>/ holds what it takes to evaluate the quantized model with no other file:
  params/          the quantized params and the float model state (BatchNorm statistics), with Orbax,
                   as one flat array per dtype (int8 or int4 values, float32 scales, biases and
                   norms) in the tree's flatten order: the model's config rebuilds the tree
  config.json      the float run's config
  tokenizer        the run's tokenizer, if it reads text
  quantized.json   mode, calibration_batches, the source step, sizes on disk, the float metrics
It is written into a hidden folder beside it and renamed into place, so a failed export leaves nothing
half-written; exporting again replaces it. The sizes are the bytes on disk of the quantized params and
model state, and of the float ones written by the same writer; a float table (an embedding)
counts at 4 bytes a number.
"""

import json
import os
import shutil
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import qwix
from absl import logging

from bigjax import evaluate, files, quantize, sharding, train
from bigjax.config import ConfigError, from_workdir
from bigjax.data import pipeline

SPLITS = ('eval', 'test')
PARAMS_DIR = 'params'
INFO = 'quantized.json'
ROUNDS = 5  # timed passes of the eval split per model
TIMED = 'eval'


def abstract_variables(s: train.Setup, model):
  """The variables of `model` (a PTQ or QAT model), abstract; its params hold qwix's how-to-quantize."""
  example = train._example_batch(s.dataset)  # noqa: SLF001 (the shapes every batch has)
  with sharding.active(s.mesh, s.rules):
    return jax.eval_shape(lambda: train.init_variables(model, s.task, example, jax.random.key(0)))


def _zeros(tree):
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), nn.meta.unbox(tree))


def calibrate(s: train.Setup, config, state, num_batches: int) -> dict:
  """Static-range int8: qwix's activation statistics (quant_stats) over the first num_batches train
  batches, un-augmented (as the model will see data), through the fake-quantized model."""
  qt = qwix.quantize_model(s.model, qwix.QtProvider(quantize.rules('int8', static_activations=True)))

  def step(stats, batch):
    _, updates = qt.apply({'params': state.params, **state.model_state, 'quant_stats': stats},
                          **s.task.model_inputs(batch), train=False, mutable=['quant_stats'])
    return updates['quant_stats']

  step = jax.jit(step)
  batches = pipeline.train_iterator(s.dataset.splits['train'], s.dataset.preprocess, s.batch_size,
                                    config.seed, sharding.host_batch_rows(s.mesh, s.batch_size),
                                    bucket=config.data.get('bucket', 0))
  with sharding.active(s.mesh, s.rules):
    # Created before jit: made inside it, qwix's statistics would leak tracers.
    stats = _zeros(abstract_variables(s, qt)['quant_stats'])
    for _ in range(num_batches):
      stats = step(stats, sharding.shard_batch(next(batches), s.mesh))
  return stats


def quantized_setup(s: train.Setup, mode: str, calibrated: bool):
  """(the Setup with the PTQ model, the PTQ model's abstract params)."""
  model = quantize.ptq_model(s.model, mode, calibrated)
  return s._replace(model=model), abstract_variables(s, model)['params']


def _with_shardings(s: train.Setup, state) -> train.Setup:
  return s._replace(state_shardings=jax.tree.map(lambda _: sharding.replicated(s.mesh), state))


def quantize_state(s: train.Setup, config, state, mode: str, calibration_batches: int = 0):
  """(the PTQ Setup, its state: the quantized params and the float model state, the params as
  stored: quantize.pack's, whose arrays qwix left float are rounded in the state as they are there)."""
  qs, abstract = quantized_setup(s, mode, calibration_batches > 0)
  stats = calibrate(s, config, state, calibration_batches) if calibration_batches else {}
  stored = quantize.pack(quantize.quantize_params(state.params, abstract, stats), mode)
  qstate = train.TrainState(step=state.step, params=quantize.unpack(stored), model_state=state.model_state,
                            opt_state=(), nonfinite_steps=state.nonfinite_steps)
  return _with_shardings(qs, qstate), qstate, stored


def _bundle(tree) -> dict:
  """The tree's arrays as one flat array per dtype, in flatten order. Orbax writes a few hundred bytes
  of metadata per array: per leaf, that was a quarter of a small model's int4 folder."""
  groups = {}
  for x in jax.tree.leaves(tree):
    groups.setdefault(jnp.dtype(x.dtype).name, []).append(jnp.ravel(x))
  return {name: jnp.concatenate(parts) for name, parts in groups.items()}


def _unbundle(bundle: dict, like):
  """_bundle's inverse: `like` is the tree of ShapeDtypeStructs it was made from."""
  leaves, treedef = jax.tree.flatten(like)
  offsets, out = {}, []
  for leaf in leaves:
    name, start = jnp.dtype(leaf.dtype).name, offsets.get(jnp.dtype(leaf.dtype).name, 0)
    out.append(bundle[name][start:start + leaf.size].reshape(leaf.shape))
    offsets[name] = start + leaf.size
  return jax.tree.unflatten(treedef, out)


def save(path: str, params, model_state) -> dict:
  """Writes the params and model state with Orbax, one array per dtype (_bundle); returns
  {'size_bytes': all its files, on disk; 'array_bytes': the arrays' data files alone}."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), _bundle({'params': params, 'model_state': model_state}))
  checkpointer.wait_until_finished()
  checkpointer.close()
  sizes = [(os.path.basename(root), os.path.getsize(os.path.join(root, name)))
           for root, _, names in os.walk(path) for name in names]
  return {'size_bytes': sum(n for _, n in sizes),
          'array_bytes': sum(n for folder, n in sizes if folder == 'd')}


def _sizes(quantized: dict, float32: dict) -> dict:
  return {**quantized, 'float32_size_bytes': float32['size_bytes'],
          'float32_array_bytes': float32['array_bytes'],
          'size_ratio': quantized['size_bytes'] / float32['size_bytes'],
          'array_ratio': quantized['array_bytes'] / float32['array_bytes']}


def restore(path: str, qs: train.Setup, abstract, model_state_like, mode: str):
  """The quantized state saved by `save`, read into replicated arrays and unpacked."""
  replicated = sharding.replicated(qs.mesh)
  stored = jax.eval_shape(lambda p: quantize.pack(p, mode), nn.meta.unbox(abstract))
  like = {'params': stored, 'model_state': nn.meta.unbox(model_state_like)}
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                        jax.eval_shape(_bundle, like))
  checkpointer = ocp.StandardCheckpointer()
  try:
    if 'params' in checkpointer.metadata(os.path.abspath(path)).item_metadata.tree:  # one array per leaf
      raise ConfigError(f'{path} was written by an older bigjax, an array per leaf: quantize the run again '
                        '(python -m bigjax.quantize)')
    restored = _unbundle(checkpointer.restore(os.path.abspath(path), target), like)
  finally:
    checkpointer.close()
  return {'params': quantize.unpack(restored['params']), 'model_state': restored['model_state']}


def scalars(metrics: dict) -> dict:
  return {k: (float(v) if isinstance(v, (float, np.floating, np.ndarray, jax.Array)) else v)
          for k, v in metrics.items() if k != 'examples' and np.ndim(v) == 0}


def measure(models: list, rounds: int = ROUNDS) -> list[dict]:
  """For each (setup, config, state): split -> (scalar metrics, eval examples per second or None).
  Each split is evaluated once per model (which compiles); the eval split is then timed in rounds
  that alternate between the models, so a busy machine slows them alike, and each model's median
  round counts. The test split is not timed: a generating task decodes all of it, which takes minutes."""
  runs = [(s, evaluate.make_evaluate(s, config), state) for s, config, state in models]
  out = [{} for _ in runs]
  for split in SPLITS:
    metrics = []
    for s, evaluate_split, state in runs:
      with sharding.active(s.mesh, s.rules):
        metrics.append(scalars(evaluate_split(state, split)))
    times = [[] for _ in runs]
    for _ in range(rounds if split == TIMED else 0):
      for (s, evaluate_split, state), seconds in zip(runs, times):
        with sharding.active(s.mesh, s.rules):
          begin = time.perf_counter()
          evaluate_split(state, split)
          seconds.append(time.perf_counter() - begin)
    for i, (s, _, _) in enumerate(runs):
      speed = len(s.dataset.splits[split]) / float(np.median(times[i])) if times[i] else None
      out[i][split] = (metrics[i], speed)
  return out


def _copy_run_files(workdir: str, target: str) -> None:
  shutil.copy2(os.path.join(workdir, 'config.json'), os.path.join(target, 'config.json'))
  tokenizer = train.tokenizer_path(workdir)
  if os.path.exists(tokenizer):
    shutil.copy2(tokenizer, train.tokenizer_path(target))


def export(workdir: str, modes, calibration_batches: int = 0, rounds: int = ROUNDS) -> list[dict]:
  """Quantizes the newest checkpoint of the run in workdir into workdir/quantized/<mode> for each of
  `modes` (one, or a list), evaluates them and the float model (once) on eval and test, and returns
  one line (a dict) per mode and split. calibration_batches: int8's static activation scales."""
  modes = [modes] if isinstance(modes, str) else list(modes)
  for mode in modes:
    if mode not in quantize.MODES:
      raise ConfigError(f'--mode={mode!r} is invalid: choose one or more of {", ".join(quantize.MODES)}')
  if len(set(modes)) != len(modes) or not modes:
    raise ConfigError(f'--mode={",".join(modes)!r} is invalid: name each mode once')
  if calibration_batches < 0 or (calibration_batches and 'int8' not in modes):
    raise ConfigError(f'--calibration_batches={calibration_batches} is invalid: use 0 (dynamic-range), or '
                      '> 0 with --mode=int8 (weight-only modes quantize no activations)')
  if rounds < 1:
    raise ConfigError(f'--rounds={rounds} is invalid: time the eval split at least once')
  config = from_workdir(workdir)
  if not (files.path(workdir) / 'checkpoints').is_dir():
    raise ConfigError(f'no checkpoints in {workdir}/checkpoints: train first, or pass the --workdir of a run')
  s = train.setup(config, workdir)
  with sharding.active(s.mesh, s.rules):
    state, step = train.restore_newest(s, config, workdir)
  os.makedirs(os.path.join(workdir, 'quantized'), exist_ok=True)
  staged, float_size = {}, None
  try:
    for mode in modes:
      calibration = calibration_batches if mode == 'int8' else 0
      qs, qstate, stored = quantize_state(s, config, state, mode, calibration)
      staging = tempfile.mkdtemp(prefix=f'.{mode}.', dir=os.path.join(workdir, 'quantized'))
      os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's is private
      staged[mode] = (staging, qs, qstate, calibration, save(os.path.join(staging, PARAMS_DIR), stored,
                                                              qstate.model_state))
      if float_size is None:
        with tempfile.TemporaryDirectory(dir=staging) as scratch:
          float_size = save(os.path.join(scratch, PARAMS_DIR), state.params, state.model_state)
    quantized = [(qs, config, qstate) for _, qs, qstate, _, _ in staged.values()]
    results = measure([(s, config, state), *quantized], rounds)
    lines = []
    for mode, (staging, _, _, calibration, size), quant in zip(modes, staged.values(), results[1:]):
      sizes = _sizes(size, float_size)
      info = {'mode': mode, 'calibration_batches': calibration, 'step': step, **sizes,
              'float': {split: results[0][split][0] for split in SPLITS}}
      _copy_run_files(workdir, staging)
      files.write_text(os.path.join(staging, INFO), json.dumps(info, indent=2, sort_keys=True) + '\n')
      final = os.path.join(workdir, 'quantized', mode)
      _replace_folder(staging, final)
      logging.info('Wrote %s: step %d, %d bytes, %.3f of float32.', final, step, size['size_bytes'],
                   sizes['size_ratio'])
      for split in SPLITS:
        speed = {} if split != TIMED else {'examples_per_s': quant[split][1],
                                           'float_examples_per_s': results[0][split][1]}
        lines.append({'split': split, 'mode': mode, 'step': step, **quant[split][0],
                      'float': results[0][split][0], **sizes, **speed})
  except BaseException:
    for staging, *_ in staged.values():
      shutil.rmtree(staging, ignore_errors=True)
    raise
  return lines


def _replace_folder(new: str, final: str) -> None:
  """Puts the folder `new` at `final`; an older `final` is set aside first and deleted after, so a
  reader never sees a mix of the two."""
  old = None
  if os.path.exists(final):
    old = tempfile.mkdtemp(prefix=f'.{os.path.basename(final)}.old.', dir=os.path.dirname(final))
    os.replace(final, os.path.join(old, 'folder'))
  os.replace(new, final)
  if old:
    shutil.rmtree(old)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def is_quantized(workdir: str) -> bool:
  return (files.path(workdir) / INFO).exists()


def restore_folder(workdir: str, adjust=None):
  """(config, the PTQ Setup, its state, quantized.json) of a quantized folder; adjust(config), if
  given, edits the config before the Setup is built."""
  info = json.loads((files.path(workdir) / INFO).read_text())
  config = from_workdir(workdir)
  if adjust:
    adjust(config)
  s = train.setup(config, workdir)
  qs, abstract = quantized_setup(s, info['mode'], info['calibration_batches'] > 0)
  restored = restore(os.path.join(workdir, PARAMS_DIR), qs, abstract, s.abstract_state.model_state,
                     info['mode'])
  qstate = train.TrainState(step=jnp.asarray(info['step'], jnp.int32), params=restored['params'],
                            model_state=restored['model_state'], opt_state=(),
                            nonfinite_steps=jnp.zeros((), jnp.int32))
  return config, _with_shardings(qs, qstate), qstate, info


def evaluate_folder(workdir: str) -> list[dict]:
  """--mode=eval of a quantized folder: one line per split, as evaluate_checkpoint prints."""
  config, qs, qstate, info = restore_folder(workdir)
  evaluate_split = evaluate.make_evaluate(qs, config)
  lines = []
  with sharding.active(qs.mesh, qs.rules):
    for split in SPLITS:
      lines.append({'step': info['step'], 'split': split, **scalars(evaluate_split(qstate, split))})
  return lines
