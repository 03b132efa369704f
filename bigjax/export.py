"""A trained run as something another program can call: its inference function as StableHLO.

  python -m bigjax.export --workdir=RUN [--format=stablehlo|savedmodel|onnx] [--out=DIR]
      [--max_new_tokens=64] [--platforms=cpu]

What is exported is what the read-only modes compute: a classifier's class probabilities
(--mode=predict), a language model's continuation with per-row temperature / top-k / top-p / seed
(--mode=sample; the decoding loop included), a sequence-to-sequence model's beam search
(--mode=generate), a speech model's best CTC path (--mode=transcribe). The batch dimension is
symbolic, and so is the length of text and audio where the model allows it. The folder (default
RUN/export) holds:

  function.stablehlo  jax.export's serialized function of (params, *inputs)
  params.npz          its first argument, a list of arrays (keys in order; no pickles)
  metadata.json       task, labels, inputs and outputs (names, shapes, dtypes), preprocessing,
                      bigjax version, the checkpoint's step, and the check below
  tokenizer           text models: the run's tokenizer

bigjax/serving/load.py reads it with jax alone. Before anything is written, the export is run on a
batch of the eval split and compared with the checkpoint's own outputs; it is refused if they differ
by more than 1e-5. savedmodel wraps the same function for TensorFlow Serving (bigjax/export_tf.py).
"""

import json
import os
import shutil
import sys
from importlib import metadata as package_metadata

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bigjax import config as config_lib
from bigjax import data, decode, evaluate, sharding, train
from bigjax.config import ConfigError
from bigjax.data import pipeline, tokenizers

FORMATS = ('stablehlo', 'savedmodel', 'onnx')
TOLERANCE = 1e-5
CHECK_EXAMPLES = 16
PROMPT_TOKENS = 16  # of each eval row, the prompts a language model's export is checked on


def kind(spec) -> str:
  """What a dataset's model is served for (the read-only --mode that computes the same)."""
  if spec.speech:
    return 'transcribe'
  if spec.target_feature:
    return 'generate'
  if spec.multi_label:
    raise ConfigError(f'export: multi-label classifiers ({spec.tfds_name}) are not exportable yet')
  if spec.label_feature or spec.image_shape is not None:
    return 'classify'
  return 'sample'


def _portable(model):
  """The model without CPU-only custom calls (bigjax/cpu's C++ LSTM layer): the export must run on
  any machine with jax, and it is checked against the checkpoint's model, which keeps them."""
  return model.clone(cpu_kernel=False) if hasattr(model, 'cpu_kernel') else model


def _classify(model):
  def probabilities(variables, inputs):
    logits = model.apply(variables, inputs, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probabilities


def _sample(model, max_new_tokens: int):
  def continuation(variables, tokens, valid, temperature, top_k, top_p, seed):  # noqa: PLR0917 (inputs, in order)
    keys = jax.vmap(jax.random.key)(seed)  # a row's samples depend on its own seed alone

    def choose(logits, step):
      rows = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
      return decode.choose_rows(logits, rows, temperature, top_k, top_p)
    return decode.continue_prompts(model, variables['params'], tokens, valid, choose=choose,
                                   xs=jnp.arange(max_new_tokens))
  return continuation


def _generate(model, task):
  return lambda variables, inputs: task.generate(model, variables, {'inputs': inputs})


def _transcribe(model, task):
  def best_path(variables, inputs, input_length):
    frame_ids, frames = task.generate(model, variables, {'inputs': inputs, 'input_length': input_length})
    return frame_ids, frames
  return best_path


def _spec(name: str, shape, dtype) -> dict:
  return {'name': name, 'shape': [d if isinstance(d, int) else str(d) for d in shape],
          'dtype': np.dtype(dtype).name}


def signature(s, config, task_kind: str, max_new_tokens: int):
  """(function of (variables, *inputs) for `model`, input specs with symbolic dims, output names)."""
  b, t = jax.export.symbolic_shape('b, t')
  spec = data.DATASETS[config.data.name]
  if task_kind == 'classify' and spec.image_shape is not None:
    size = config.data.get('image_size', 0)
    shape = (b, size, size, spec.image_shape[-1]) if size else (b, *spec.image_shape)
    return _classify, [('inputs', shape, np.float32)], ['probabilities']
  if task_kind == 'classify':
    return _classify, [('inputs', (b, t), np.int32)], ['probabilities']
  if task_kind == 'sample':
    rows = [('temperature', np.float32), ('top_k', np.int32), ('top_p', np.float32), ('seed', np.uint32)]
    return (lambda model: _sample(model, max_new_tokens),
            [('tokens', (b, t), np.int32), ('valid', (b, t), np.bool_)] + [(n, (b,), d) for n, d in rows],
            ['tokens'])
  if task_kind == 'generate':
    return (lambda model: _generate(model, s.task)), [('inputs', (b, t), np.int32)], ['tokens']
  return ((lambda model: _transcribe(model, s.task)),
          [('inputs', (b, t), np.int16), ('input_length', (b,), np.int32)], ['frame_ids', 'frames'])


def check_inputs(s, config, task_kind: str) -> list[np.ndarray]:
  """A batch of real examples (the eval split's first rows), as the exported function takes them."""
  split = s.dataset.splits['eval']
  n = min(CHECK_EXAMPLES, len(split))
  batch = next(pipeline.eval_batches(split.take(n), s.dataset.preprocess, n))
  if task_kind in ('classify', 'generate'):
    return [batch['inputs']]
  if task_kind == 'transcribe':
    return [batch['inputs'], batch['input_length']]
  tokens = batch['inputs'][:, :PROMPT_TOKENS].astype(np.int32)
  half = np.arange(n) % 2 == 0  # greedy rows and sampled rows, with each sampling option
  return [tokens, np.ones_like(tokens, bool), np.where(half, 0.0, 0.9).astype(np.float32),
          np.where(half, 0, 20).astype(np.int32), np.where(half, 1.0, 0.9).astype(np.float32),
          np.arange(n, dtype=np.uint32)]


def _max_diff(a, b) -> float:
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max(diffs)


def _max_prompt(config, max_new_tokens: int) -> int:
  """Prompt tokens a continuation may follow: the context the model was trained on, less its new tokens."""
  room = int(config.data.seq_len) - max_new_tokens
  if room < 1:
    raise ConfigError(f'--max_new_tokens={max_new_tokens} leaves no room for a prompt in the model\'s '
                      f'{config.data.seq_len}-token context')
  return room


def _version() -> str:
  try:
    return package_metadata.version('bigjax')
  except package_metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
    return 'unknown'


def _metadata(s, config, task_kind, *, step, inputs, outputs, check, params, max_new_tokens) -> dict:
  spec = data.DATASETS[config.data.name]
  meta = {'format': 'bigjax-stablehlo-1', 'task': task_kind, 'bigjax_version': _version(),
          'jax_version': jax.__version__, 'step': int(step), 'model': config.model.name,
          'data': config.data.name, 'inputs': inputs, 'outputs': outputs, 'check': check,
          'params': {'arrays': len(params), 'values': int(sum(p.size for p in params)),
                     'bytes': int(sum(p.nbytes for p in params))}}
  if task_kind == 'classify':
    meta['labels'] = list(s.dataset.class_names or (str(i) for i in range(s.dataset.num_classes)))
  if spec.image_shape is not None:
    meta['image'] = {'shape': inputs[0]['shape'][1:], 'mean': list(spec.mean or (0.5,)),
                     'std': list(spec.std or (0.25,)), 'resize': spec.image_shape[0] is None}
  tokenizer = s.dataset.tokenizer
  if tokenizer is not None:
    meta['text'] = {'tokenizer': 'tokenizer', 'kind': tokenizer.kind, 'pad_id': tokenizer.pad_id,
                    'bos_id': tokenizer.bos_id, 'eos_id': tokenizer.eos_id,
                    'max_tokens': int(config.data.seq_len)}
  if task_kind == 'sample':
    meta['sample'] = {'max_new_tokens': max_new_tokens,
                      'max_prompt_tokens': _max_prompt(config, max_new_tokens)}
  if task_kind == 'transcribe':
    meta['audio'] = {'sample_rate': 16000, 'blank_id': tokenizer.pad_id}
  return meta


def export(workdir: str, out: str | None = None, fmt: str = 'stablehlo', *, max_new_tokens: int = 64,
           platforms: tuple = ('cpu',)) -> str:
  """Exports the newest checkpoint of workdir to out (default workdir/export); returns the folder.
  ConfigError for bad input, with nothing written."""
  if fmt not in FORMATS:
    raise ConfigError(f'--format={fmt!r} is not one of {", ".join(FORMATS)}')
  if fmt == 'onnx':
    raise ConfigError('--format=onnx: jax2onnx does not install beside orbax-checkpoint 0.12 '
                      '(docs/deploy.md says why and what to use instead)')
  out = out or os.path.join(workdir, 'export')
  if fmt == 'savedmodel':
    from bigjax import export_tf  # noqa: PLC0415 (TensorFlow only for this format)
    stablehlo = os.path.join(out, 'stablehlo')
    export(workdir, stablehlo, max_new_tokens=max_new_tokens, platforms=platforms)
    return export_tf.savedmodel(stablehlo, os.path.join(out, 'savedmodel'))['path']
  config = config_lib.from_workdir(workdir)
  if max_new_tokens < 1:
    raise ConfigError(f'--max_new_tokens={max_new_tokens} must be >= 1')
  task_kind = kind(data.DATASETS[config.data.name])
  if task_kind == 'sample':
    _max_prompt(config, max_new_tokens)
  if task_kind == 'transcribe':
    config.task.beam_size = 1  # the best path on the device; prefix beam search is host-side
  s = train.setup(config, workdir)
  with sharding.active(s.mesh, s.rules):
    state, step = train.restore_newest(s, config, workdir)
    variables = jax.device_get(evaluate.variables(state))
    make, specs, output_names = signature(s, config, task_kind, max_new_tokens)
    inputs = check_inputs(s, config, task_kind)
    expected = jax.jit(make(s.model))(variables, *inputs)
  # Traced outside the mesh: the function carries no sharding, and runs on whatever device loads it.
  flat, treedef = jax.tree.flatten(variables)
  portable = make(_portable(s.model))
  exported = jax.export.export(jax.jit(lambda flat, *xs: portable(jax.tree.unflatten(treedef, flat), *xs)),
                               platforms=platforms)(
      [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat],
      *[jax.ShapeDtypeStruct(shape, dtype) for _, shape, dtype in specs])
  got = jax.export.deserialize(exported.serialize()).call(flat, *inputs) if 'cpu' in platforms else expected
  diff = _max_diff(expected, got)
  if not diff <= TOLERANCE:
    raise ConfigError(f'export refused: its outputs differ from the checkpoint\'s by {diff:.3g} '
                      f'(> {TOLERANCE}) on {len(inputs[0])} eval examples')
  params = [np.asarray(x) for x in flat]
  outputs = [_spec(n, o.shape, o.dtype) for n, o in zip(output_names, exported.out_avals)]
  check = {'examples': len(inputs[0]), 'max_abs_diff': diff, 'tolerance': TOLERANCE, 'split': 'eval'}
  meta = _metadata(s, config, task_kind, step=step, inputs=[_spec(*x) for x in specs], outputs=outputs,
                   check=check, params=params, max_new_tokens=max_new_tokens)
  meta['platforms'] = list(platforms)
  _write(out, exported.serialize(), params, meta, s.dataset.tokenizer)
  return out


def _write(out: str, function: bytes, params: list, meta: dict, tokenizer) -> None:
  """Staged beside out, then renamed over it: a killed export never leaves half a folder."""
  stage = epath.Path(out).parent / f'.{epath.Path(out).name}.partial'
  if stage.exists():
    shutil.rmtree(stage)
  stage.mkdir(parents=True)
  (stage / 'function.stablehlo').write_bytes(bytes(function))
  np.savez(stage / 'params.npz', **{f'{i:05d}': p for i, p in enumerate(params)})
  if tokenizer is not None and 'text' in meta:
    tokenizers.save(tokenizer, str(stage / 'tokenizer'))
  (stage / 'metadata.json').write_text(json.dumps(meta, indent=1) + '\n')
  if epath.Path(out).exists():
    shutil.rmtree(out)
  os.rename(stage, out)


def main(argv) -> None:
  from absl import flags  # noqa: PLC0415

  from absl import logging as absl_logging  # noqa: PLC0415

  from bigjax import cpu, quantize  # noqa: PLC0415
  from bigjax.config import RunStopped, fail  # noqa: PLC0415
  cpu.keep_freed_memory_on_cpu()
  absl_logging.get_absl_handler().python_handler.addFilter(quantize.bigjax_or_warning)
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.workdir:
    fail('--workdir=RUN is required: the folder of a trained run')
  try:
    if not os.path.isdir(os.path.join(f.workdir, 'checkpoints')):
      raise ConfigError(f'no checkpoints in {f.workdir}: train first, or pass the --workdir of a run')
    platforms = tuple(p.strip() for p in f.platforms.split(',') if p.strip())
    path = export(f.workdir, f.out, f.format, max_new_tokens=f.max_new_tokens, platforms=platforms)
    meta = json.loads((epath.Path(path) / 'metadata.json').read_text()) if fmt_is_stablehlo(path) else {}
    print(json.dumps({'path': path, 'format': f.format, **{k: meta[k] for k in ('task', 'step', 'check')
                                                          if k in meta}}), flush=True)
  except ConfigError as e:
    fail(str(e))
  except RunStopped as e:
    print(f'bigjax: stopped: {e}', file=sys.stderr, flush=True)
    sys.exit(e.status)


def fmt_is_stablehlo(path: str) -> bool:
  return (epath.Path(path) / 'metadata.json').exists() and (epath.Path(path) / 'function.stablehlo').exists()


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'A trained run\'s folder.')
  flags.DEFINE_string('out', None, 'Where to write the export (default WORKDIR/export).')
  flags.DEFINE_string('format', 'stablehlo', ' | '.join(FORMATS))
  flags.DEFINE_integer('max_new_tokens', 64, 'Language models: tokens each continuation may have.')
  flags.DEFINE_string('platforms', 'cpu', 'Comma-separated: cpu, cuda, rocm, tpu (lowered here, run there).')
  app.run(main)
