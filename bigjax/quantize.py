"""Quantization with qwix: fake-quantized training (QAT) and post-training quantization (PTQ).

  python -m bigjax.main --config=experiments/digits_cnn.py --config.quant.mode=int8   # QAT
  python -m bigjax.quantize --workdir=RUN --mode=int8|int8_weights|int4_weights [--calibration_batches=N]
  python -m bigjax.quantize --workdir=RUN --mode=int8,int8_weights,int4_weights   # float evaluated once
  python -m bigjax.main --mode=eval --workdir=RUN/quantized/int8

Modes (MODES: the qwix rules of each, shared by QAT and PTQ):
  int8          weights and activations int8; activations dynamic-range (a scale per call) by default,
                static-range (scales from --calibration_batches train batches) on request
  int8_weights  weights int8, activations float
  int4_weights  weights int4, activations float
Weights get one scale per output channel (absmax).

What qwix computes in float here, and how it is stored anyway:
- Convolutions in the weight-only modes: qwix's PTQ convolution quantizes its input with the weights'
  type, so those rules match only dot_general and einsum (int8 quantizes convolutions too).
- Embedding tables (modules named *embed*): a lookup is a gather, which qwix does not intercept;
  a tied output layer (embed.attend) stays with its table.
- Attention modules (*attention, memory_kv*): their query/key/value kernels are concatenated before
  one matmul and the output kernel is reshaped, neither of which qwix can take quantized.
- The Conformer's subsampling convolutions (subsample/conv_*): one matmul over a reshaped kernel.
- LSTM layers (modules named lstm_*): on CPU their recurrence runs in C++ (bigjax.cpu.lstm), which
  qwix cannot see, and on the lax.scan path the recurrent matmul is a `h @ W` that a quantized
  weight cannot stand in for. They keep their C++ kernel.
The exported checkpoint still stores each of those arrays (two or more axes) at the mode's weight
type, qwix.quantize with a scale per row (pack), and its reader dequantizes them (unpack): their
layers compute in float with rounded weights, which is weight-only quantization, and the metrics
the export reports are of those rounded weights. Biases and norms stay float.
- Calibrated int8 (static-range) still gives convolutions dynamic-range activations: qwix's
  fake-quantized convolution cannot collect activation statistics.
Layers stacked by nn.scan (scan_layers) are quantized layer by layer, each with its own scales.

QAT (for_training) keeps the float parameter tree: checkpoints, the optimizer and sharding are those
of a float run; gradients pass the rounding straight through. Its forward pass computes what the PTQ
model of the same mode computes, so quantizing a QAT run reproduces its eval metrics.

bigjax/quant_eval.py writes and evaluates the quantized folder.
"""

import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix

from bigjax.config import check

# Modules qwix cannot quantize here (see the module's doc): their rule has no qtype, so they stay float.
KEEP_FLOAT = qwix.QuantizationRule(
    module_path=r'(.*/)?((\w+_)?embed(ding)?|\w*attention|memory_kv\w*|lstm_\w*|subsample/conv_\d+)(/.*)?')
MATMULS = ('dot_general', 'einsum')


def rules(mode: str, static_activations: bool = False) -> list:
  """The qwix rules of a mode; static_activations (int8 only): calibrated activation scales."""
  if mode == 'int8':
    # Convolutions dynamic-range even when calibrated: qwix's fake-quantized convolution leaks a
    # tracer from its custom_vjp when it collects activation statistics.
    int8 = dict(weight_qtype=jnp.int8, act_qtype=jnp.int8)
    return [KEEP_FLOAT, qwix.QuantizationRule(op_names=('conv_general_dilated',), **int8),
            qwix.QuantizationRule(**int8, act_static_scale=static_activations)]
  qtype = {'int8_weights': jnp.int8, 'int4_weights': jnp.int4}[mode]
  return [KEEP_FLOAT, qwix.QuantizationRule(op_names=MATMULS, weight_qtype=qtype)]


MODES = {mode: rules(mode) for mode in ('int8', 'int8_weights', 'int4_weights')}


def check_config(quant_config) -> None:
  """ConfigError naming config.quant.mode unless it is '' or one of MODES."""
  check(quant_config.mode in ('', *MODES), 'quant.mode', quant_config.mode,
        f"use '' (no quantization) or one of {', '.join(MODES)}")


def for_training(model: nn.Module, mode: str) -> nn.Module:
  """The model with fake quantization (QAT) in `mode`; '' returns it unchanged."""
  if not mode:
    return model
  return qwix.quantize_model(model, qwix.QtProvider(MODES[mode]))


def ptq_model(model: nn.Module, mode: str, calibrated: bool = False) -> nn.Module:
  """The model that computes with quantize_params' quantized params in `mode`; calibrated (int8):
  with static activation scales, which quantize_params computes from calibration statistics."""
  return qwix.quantize_model(model, qwix.PtqProvider(rules(mode, calibrated)))


# Where a model keeps layers stacked by nn.scan (bigjax.models.transformer.run_layers).
SCANNED = 'layers'


def _has_scan(tree) -> bool:
  return isinstance(tree, dict) and any(k == SCANNED or _has_scan(v) for k, v in tree.items())


def quantize_params(params: dict, abstract: dict, quant_stats: dict | None = None) -> dict:
  """qwix.quantize_params, also for layers stacked by nn.scan: qwix would quantize such a stack
  as one array (one scale over all layers, on the wrong axes), so each stack goes through it one
  layer at a time, under vmap. `abstract`: the PTQ model's params from (eval_shape of) its init;
  `quant_stats`: calibration statistics, for static activation scales."""
  abstract, quant_stats = nn.meta.unbox(abstract), dict(quant_stats or {})
  nested = {k for k, v in params.items() if k == SCANNED or _has_scan(v)}
  flat = {k: v for k, v in params.items() if k not in nested}
  out = qwix.quantize_params(flat, abstract, {k: v for k, v in quant_stats.items() if k not in nested}) \
      if flat else {}
  for key in nested:
    out[key] = (_quantize_stack if key == SCANNED else quantize_params)(
        params[key], abstract[key], quant_stats.get(key, {}))
  return out


def _quantize_stack(params: dict, abstract: dict, quant_stats: dict) -> dict:
  per_layer = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), abstract)
  # Every layer counted the same batches: the count (a Python-level check in qwix) is not mapped.
  is_count = lambda path: path[-1].key == 'count'  # noqa: E731
  axes = jax.tree_util.tree_map_with_path(lambda path, _: None if is_count(path) else 0, quant_stats)
  stats = jax.tree_util.tree_map_with_path(lambda path, x: x[0] if is_count(path) else x, quant_stats)
  return jax.vmap(lambda p, s: qwix.quantize_params(p, per_layer, s), in_axes=(0, axes))(params, stats)


def _qwix_leaf(x) -> bool:
  return isinstance(x, qwix.QArray) or hasattr(x, 'how')  # qwix's PTQ weight (WithAux) knows its `how`


def pack(params, mode: str):
  """The params as stored: each float array of two or more axes that the rules left float (embedding
  tables, attention, LSTM layers, and convolutions in the weight-only modes) becomes a qwix.QArray of
  the mode's weight type, one absmax scale per row of its last axis. Their layers compute in float
  with the rounded weights (unpack): weight-only quantization, done on load."""
  qtype = jnp.int4 if mode == 'int4_weights' else jnp.int8

  def one(x):
    if _qwix_leaf(x) or x.ndim < 2:
      return x
    return qwix.quantize(x, qtype, channelwise_axes=tuple(range(x.ndim - 1)))
  return jax.tree.map(one, params, is_leaf=_qwix_leaf)


def unpack(params):
  """pack's params with its QArrays back in float, as the PTQ model reads them."""
  return jax.tree.map(lambda x: qwix.dequantize(x) if isinstance(x, qwix.QArray) else x, params,
                      is_leaf=_qwix_leaf)


def _define_flags() -> None:
  from absl import flags  # noqa: PLC0415 (only when run as a program: bigjax.main has --mode too)
  flags.DEFINE_string('workdir', None, 'A trained run\'s folder; writes WORKDIR/quantized/MODE.')
  flags.DEFINE_list('mode', ['int8'], 'int8 | int8_weights | int4_weights, or several, comma-separated: '
                    'the float model is then evaluated once for all.')
  flags.DEFINE_integer('calibration_batches', 0, '--mode=int8: static activation scales from this many '
                       'train batches; 0: dynamic-range (a scale per call).')
  flags.DEFINE_integer('rounds', 5, 'Timed passes over the eval split per model (the median counts).')


def _parse_flags(argv):
  from absl import flags  # noqa: PLC0415

  from bigjax.config import fail  # noqa: PLC0415
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (any parse failure is the user's input)
    fail(str(e).splitlines()[0])


def bigjax_or_warning(record) -> bool:
  """Keeps INFO lines from bigjax only (Orbax alone logs dozens per checkpoint), and not Orbax's
  warning that the run's checkpoints are opened read-only, as bigjax asked: as bigjax.main does."""
  if record.getMessage().startswith('Given directory is read only'):
    return False
  return record.levelno >= logging.WARNING or f'{os.sep}bigjax{os.sep}' in record.pathname


def main(argv) -> None:
  """Quantizes --workdir's newest checkpoint; one JSON line per split on stdout. Bad input: one line
  on stderr and exit status 2, with nothing written."""
  import json  # noqa: PLC0415

  from absl import flags  # noqa: PLC0415
  from absl import logging as absl_logging  # noqa: PLC0415

  from bigjax import cpu, quant_eval  # noqa: PLC0415 (quant_eval imports train, which imports this)
  from bigjax.config import fail, one_line_exits  # noqa: PLC0415
  cpu.keep_freed_memory_on_cpu()  # before jax starts its CPU client (bigjax/cpu/heap.py)
  absl_logging.get_absl_handler().python_handler.addFilter(bigjax_or_warning)
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS.workdir:
    fail('--workdir=RUN is required: the folder of a trained run')
  with one_line_exits():  # RunStopped: a checkpoint that does not read back
    for line in quant_eval.export(flags.FLAGS.workdir, flags.FLAGS.mode, flags.FLAGS.calibration_batches,
                                 flags.FLAGS.rounds):
      print(json.dumps(line), flush=True)


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main, flags_parser=_parse_flags)
