"""A trained run as something another program can call: its inference function as StableHLO.

  python -m bigjax.export --workdir=RUN [--format=stablehlo|savedmodel|onnx] [--out=DIR]
      [--max_new_tokens=64] [--platforms=cpu,cuda,tpu]

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

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

import bigjax
from bigjax import config as config_lib
from bigjax import data, decode, evaluate, quant_eval, sharding, train
from bigjax.config import ConfigError
from bigjax.data import pipeline, tokenizers
from bigjax.serving import load

FORMATS = ('stablehlo', 'savedmodel', 'onnx')
TOLERANCE = 1e-5
CHECK_EXAMPLES = 16
PROMPT_TOKENS = 16  # of each eval row, the prompts a language model's export is checked on
# Audio lengths the speech export takes: 640 k + 320 samples make 4 k frames of 10 ms (25 ms windows),
# which the Conformer's 4x subsampling halves exactly twice; XLA can then prove every shape's size.
AUDIO_MULTIPLE, AUDIO_OFFSET = 640, 320


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
  if task_kind == 'transcribe':
    b, k = jax.export.symbolic_shape('b, k', constraints=('k >= 1',))
    return ((lambda model: _transcribe(model, s.task)),
            [('inputs', (b, AUDIO_MULTIPLE * k + AUDIO_OFFSET), np.int16), ('input_length', (b,), np.int32)],
            ['frame_ids', 'frames'])
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
  return (lambda model: _generate(model, s.task)), [('inputs', (b, t), np.int32)], ['tokens']


def check_inputs(s, config, task_kind: str) -> list[np.ndarray]:
  """A batch of real examples (the eval split's first rows), as the exported function takes them."""
  split = s.dataset.splits['eval']
  n = min(CHECK_EXAMPLES, len(split))
  batch = next(pipeline.eval_batches(split.take(n), s.dataset.preprocess, n))
  if task_kind in ('classify', 'generate'):
    return [batch['inputs']]
  if task_kind == 'transcribe':
    return [audio_padded(batch['inputs']), batch['input_length']]
  tokens = batch['inputs'][:, :PROMPT_TOKENS].astype(np.int32)
  half = np.arange(n) % 2 == 0  # greedy rows and sampled rows, with each sampling option
  return [tokens, np.ones_like(tokens, bool), np.where(half, 0.0, 0.9).astype(np.float32),
          np.where(half, 0, 20).astype(np.int32), np.where(half, 1.0, 0.9).astype(np.float32),
          np.arange(n, dtype=np.uint32)]


def audio_length(samples: int) -> int:
  """The shortest length the speech export takes that holds this many samples."""
  return AUDIO_OFFSET + AUDIO_MULTIPLE * max(1, -(-(samples - AUDIO_OFFSET) // AUDIO_MULTIPLE))


def audio_padded(samples: np.ndarray) -> np.ndarray:
  return np.pad(samples, ((0, 0), (0, audio_length(samples.shape[1]) - samples.shape[1])))


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


def _metadata(s, config, task_kind, *, step, inputs, outputs, check, params, max_new_tokens) -> dict:
  spec = data.DATASETS[config.data.name]
  meta = {'format': load.FORMAT, 'task': task_kind, 'bigjax_version': bigjax.__version__,
          'jax_version': jax.__version__, 'step': int(step), 'model': config.model.name,
          'data': config.data.name, 'inputs': inputs, 'outputs': outputs, 'check': check,
          'params': {'arrays': len(params), 'values': int(sum(p.size for p in params)),
                     'bytes': int(sum(p.nbytes for p in params)), 'dtypes': [p.dtype.name for p in params]}}
  if task_kind == 'classify':
    meta['labels'] = list(s.dataset.class_names or (str(i) for i in range(s.dataset.num_classes)))
  if spec.image_shape is not None:
    meta['image'] = {'shape': inputs[0]['shape'][1:], 'mean': list(spec.mean or (0.5,)),
                     'std': list(spec.std or (0.25,)), 'resize': spec.image_shape[0] is None}
  tokenizer = s.dataset.tokenizer
  if tokenizer is not None:
    meta['text'] = {'tokenizer': 'tokenizer', 'kind': tokenizer.kind, 'pad_id': tokenizer.pad_id,
                    'bos_id': tokenizer.bos_id, 'eos_id': tokenizer.eos_id,
                    'max_tokens': int(config.data.get('seq_len', 0)),
                    # > 0: the config says padding never changes an output (data.bucket), so a server
                    # may pad a batch to its longest text's multiple of this rather than to max_tokens
                    'length_bucket': int(config.data.get('bucket', 0))}
  if task_kind == 'generate':
    meta['beam_size'] = int(config.task.beam_size)
  if task_kind == 'sample':
    meta['sample'] = {'max_new_tokens': max_new_tokens,
                      'max_prompt_tokens': _max_prompt(config, max_new_tokens)}
  if task_kind == 'transcribe':
    meta['audio'] = {'sample_rate': 16000, 'blank_id': tokenizer.pad_id, 'length_multiple': AUDIO_MULTIPLE,
                     'length_offset': AUDIO_OFFSET}
  return meta


def _beam_size_one(config) -> None:
  if kind(data.DATASETS[config.data.name]) == 'transcribe':
    config.task.beam_size = 1  # the best path on the device; prefix beam search is host-side


def _restore(workdir: str):
  """(config, Setup, state, step, quantization mode or '') of a run's newest checkpoint, or of a
  quantized folder (python -m bigjax.quantize's RUN/quantized/MODE)."""
  if quant_eval.is_quantized(workdir):
    config, s, state, info = quant_eval.restore_folder(workdir, _beam_size_one)
    return config, s, state, info['step'], info['mode']
  config = config_lib.from_workdir(workdir)
  _beam_size_one(config)
  s = train.setup(config, workdir)
  with sharding.active(s.mesh, s.rules):
    state, step = train.restore_newest(s, config, workdir)
  return config, s, state, step, ''


def export(workdir: str, out: str | None = None, fmt: str = 'stablehlo', *, max_new_tokens: int = 64,
           platforms: tuple = ()) -> str:
  """Exports the newest checkpoint of workdir to out (default workdir/export); returns the folder.
  platforms: where it may run (jax.export's names; default: this machine's). ConfigError for bad input,
  with nothing written."""
  here = jax.export.default_export_platform()
  platforms = tuple(platforms) or (here,)
  if here not in platforms:
    raise ConfigError(f'--platforms={",".join(platforms)} leaves out this machine\'s {here}, where the '
                      f'export is checked against the checkpoint: add it')
  if fmt not in FORMATS:
    raise ConfigError(f'--format={fmt!r} is not one of {", ".join(FORMATS)}')
  if fmt == 'onnx':
    raise ConfigError('--format=onnx: no jax2onnx release both installs beside orbax-checkpoint 0.12 and '
                      'converts a jax.export artifact (docs/serving.md says why, and what to use instead)')
  out = out or os.path.join(workdir, 'export')
  if fmt == 'savedmodel':
    from bigjax import export_tf  # noqa: PLC0415 (TensorFlow only for this format)
    stablehlo = os.path.join(out, 'stablehlo')
    export(workdir, stablehlo, max_new_tokens=max_new_tokens, platforms=platforms)
    result = export_tf.savedmodel(stablehlo, os.path.join(out, 'savedmodel'))
    meta_path = epath.Path(result['path']) / 'metadata.json'
    meta = json.loads(meta_path.read_text())
    meta['check']['tensorflow_max_abs_diff'] = result['max_abs_diff']  # the SavedModel against the export
    meta_path.write_text(json.dumps(meta, indent=1) + '\n')
    return result['path']
  if max_new_tokens < 1:
    raise ConfigError(f'--max_new_tokens={max_new_tokens} must be >= 1')
  config, s, state, step, quantized = _restore(workdir)
  task_kind = kind(data.DATASETS[config.data.name])
  if task_kind == 'sample':
    _max_prompt(config, max_new_tokens)
  with sharding.active(s.mesh, s.rules):
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
  function = exported.serialize()
  logging.info('Exported %s (step %d) for %s; checking it against the checkpoint on %d eval examples.',
               task_kind, step, ','.join(platforms), len(inputs[0]))
  diff = _max_diff(expected, jax.export.deserialize(function).call(flat, *inputs))
  if not diff <= TOLERANCE:
    raise ConfigError(f'export refused: its outputs differ from the checkpoint\'s by {diff:.3g} '
                      f'(> {TOLERANCE}) on {len(inputs[0])} eval examples')
  params = [np.asarray(x) for x in flat]
  outputs = [_spec(n, o.shape, o.dtype) for n, o in zip(output_names, exported.out_avals)]
  check = {'examples': len(inputs[0]), 'max_abs_diff': diff, 'tolerance': TOLERANCE, 'split': 'eval'}
  meta = _metadata(s, config, task_kind, step=step, inputs=[_spec(*x) for x in specs], outputs=outputs,
                   check=check, params=params, max_new_tokens=max_new_tokens)
  meta.update(platforms=list(platforms), quantized=quantized)
  _write(out, function, params, meta, s.dataset.tokenizer)
  logging.info('Wrote %s: max abs difference %.3g from the checkpoint.', out, diff)
  return out


def _storable(x: np.ndarray) -> np.ndarray:
  """x as numpy can save it without pickles: JAX's extra types (int4, bfloat16) as unsigned integers of
  their width; metadata's params.dtypes says what to view them as."""
  return x.view(f'uint{8 * x.dtype.itemsize}') if x.dtype.type.__module__.startswith('ml_dtypes') else x


def _write(out: str, function: bytes, params: list, meta: dict, tokenizer) -> None:
  """Staged beside out, then renamed over it: a killed export never leaves half a folder."""
  stage = epath.Path(out).parent / f'.{epath.Path(out).name}.partial'
  if stage.exists():
    shutil.rmtree(stage)
  stage.mkdir(parents=True)
  (stage / 'function.stablehlo').write_bytes(bytes(function))
  np.savez(stage / 'params.npz', **{f'{i:05d}': _storable(p) for i, p in enumerate(params)})
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
  from bigjax.config import fail, one_line_exits  # noqa: PLC0415
  cpu.keep_freed_memory_on_cpu()
  absl_logging.get_absl_handler().python_handler.addFilter(quantize.bigjax_or_warning)
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.workdir:
    fail('--workdir=RUN is required: the folder of a trained run')
  with one_line_exits():
    if not (os.path.isdir(os.path.join(f.workdir, 'checkpoints')) or quant_eval.is_quantized(f.workdir)):
      raise ConfigError(f'no checkpoints in {f.workdir}: train first, or pass the --workdir of a run')
    platforms = tuple(p.strip() for p in f.platforms.split(',') if p.strip())
    path = export(f.workdir, f.out, f.format, max_new_tokens=f.max_new_tokens, platforms=platforms)
    meta = json.loads((epath.Path(path) / 'metadata.json').read_text())
    print(json.dumps({'path': path, 'format': f.format, **{k: meta[k] for k in ('task', 'step', 'check')
                                                          if k in meta}}), flush=True)


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'A trained run\'s folder.')
  flags.DEFINE_string('out', None, 'Where to write the export (default WORKDIR/export).')
  flags.DEFINE_string('format', 'stablehlo', ' | '.join(FORMATS))
  flags.DEFINE_integer('max_new_tokens', 64, 'Language models: tokens each continuation may have.')
  flags.DEFINE_string('platforms', '', 'Comma-separated: cpu, cuda, rocm, tpu (lowered here, run there); '
                      'default: this machine\'s. It must be among them: the export is checked here.')
  app.run(main)
