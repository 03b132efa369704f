"""bigjax's entry point.

  python -m bigjax.main --config=experiments/digits_mlp.py [--config.train.steps=500] \
      [--workdir=runs/digits] [--mode=train|eval|sample|predict|generate|transcribe|explain] [--dry_run]
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Bad input (an unknown field, a wrong type, a missing config file, an invalid
value) is reported in one line with exit status 2, before anything is compiled
or written.
"""

import importlib.util
import json
import logging as python_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bigjax import cpu
from bigjax.config import ConfigError, fail, from_workdir, one_line_exits, validate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, FILE[:ARG].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder; default runs/<config name>.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'sample', 'predict', 'generate', 'transcribe', 'explain'],
    'train (resumes from the newest checkpoint) | eval (the newest checkpoint on eval and test) | '
    'sample (a language model continues --prompt) | predict (a text classifier labels each --text) | '
    'generate (a translation or summarization model decodes each --text) | '
    'transcribe (a speech model transcribes each --audio WAV file) | '
    'explain (attribution maps of a classifier\'s inputs into WORKDIR/explain/).')
_PROMPT = flags.DEFINE_string('prompt', '', '--mode=sample: the text to continue.')
_TEXT = flags.DEFINE_multi_string('text', [], '--mode=predict|generate|explain: a text to classify, '
                                  'translate, summarize or explain (repeat for more).')
_AUDIO = flags.DEFINE_multi_string('audio', [], '--mode=transcribe: a WAV file (repeat for more).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 3, '--mode=sample: continuations to print.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 200, '--mode=sample: tokens per continuation.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, '--mode=sample: 0 is greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 40, '--mode=sample: keep the k likeliest tokens (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 0.95, '--mode=sample: keep the smallest set with this mass (1: all).')
# --mode=explain (bigjax/explain.py): which inputs, which method.
_IMAGE = flags.DEFINE_string('image', '', '--mode=explain: an image file (else --text, else --split).')
_SPLIT = flags.DEFINE_string('split', 'test', '--mode=explain: explain the first --num_examples of it.')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 4, '--mode=explain: examples of --split.')
_METHOD = flags.DEFINE_enum('method', 'integrated_gradients',
                            ['integrated_gradients', 'smoothgrad', 'gradient_x_input', 'attention_rollout'],
                            '--mode=explain: the attribution method.')
_TARGET = flags.DEFINE_integer('target', -1, '--mode=explain: the class explained (-1: the predicted one).')
_STEPS = flags.DEFINE_integer('steps', 64, '--method=integrated_gradients: steps along the path.')
_BASELINE = flags.DEFINE_enum('baseline', 'auto', ['auto', 'black', 'zeros', 'blur'],
                              '--mode=explain: the input meaning "no evidence"; auto: black for images, '
                              'zeros (a zero embedding) for text.')
_NOISE = flags.DEFINE_float('noise', 0.15, '--method=smoothgrad: noise std, a fraction of the input range.')
_SAMPLES = flags.DEFINE_integer('samples', 32, '--method=smoothgrad: noisy copies averaged.')


_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Compile the train step for the mesh, print one JSON line of memory and FLOPs, exit.')
_TOPOLOGY = flags.DEFINE_string(
    'topology', '', '--dry_run: compile for this TPU slice (v5e:4x4, v4:2x2x4, v5p:4x4x4, v6e:8x8) '
    'instead of this machine\'s devices; needs requirements-tpu.txt, not a TPU.')
# Multi-host: explicit, or detected on Cloud TPU and SLURM (jax.distributed's own detection).
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None, 'Initialize jax.distributed by auto-detection; default: when on a '
    'multi-task SLURM job or a multi-host Cloud TPU.')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 30, 'Multi-process: a process silent this long is dead, and every other '
    'process then stops with an error (JAX defaults to 100 s).')


def _config_spec(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config_file(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_bigjax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _explain_unknown_field(argv) -> str | None:
  """Finds the first --config.a.b override whose path the config does not have."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  config = _load_config_file(spec)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node = config
    for depth, key in enumerate(path):
      if not hasattr(node, 'keys') or key not in node:
        where = 'config.' + '.'.join(path[:depth]) if depth else 'the config'
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'no fields'
        return f'unknown field --config.{".".join(path)}: {where} has {known}'
      node = node[key]
  return None


def parse_flags(argv):
  """absl flag parsing, with every failure turned into one line and exit status 2."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (any parse failure is the user's input)
    explanation = None
    if isinstance(e, AttributeError):
      try:
        explanation = _explain_unknown_field(argv)
      except Exception:  # noqa: BLE001 (fall back to the original message)
        pass
    fail(explanation or str(e).splitlines()[0])
  spec = _config_spec(argv)
  if spec is None and _MODE.value == 'eval' and _WORKDIR.value and \
      os.path.exists(os.path.join(_WORKDIR.value, 'config.json')):
    return rest  # --mode=eval reads the run's own config.json
  if spec is None:
    fail('--config=FILE[:ARG] is required, for example --config=experiments/digits_mlp.py '
         '(--mode=eval of a --workdir may leave it out: the run\'s config.json says it)')
  try:
    _CONFIG.value.keys()
  except Exception as e:  # noqa: BLE001 (config_flags defers load errors to first access)
    path = spec.partition(':')[0]
    if not os.path.exists(path):
      fail(f'config file {path} does not exist (paths are relative to {os.getcwd()})')
    fail(f'config file {spec} could not be loaded: {str(e.__cause__ or e).splitlines()[0]}')
  return rest


def default_workdir(spec: str) -> str:
  path, _, arg = spec.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{name}_{arg}' if arg else name)


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines from bigjax only: Orbax alone logs dozens per checkpoint. Orbax also warns
  each time a read-only mode opens the checkpoints, which is what bigjax asked of it."""
  if record.getMessage().startswith('Given directory is read only'):
    return False
  return record.levelno >= python_logging.WARNING or f'{os.sep}bigjax{os.sep}' in record.pathname


def _multi_host_environment() -> bool:
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  tpu = len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1
  return slurm or tpu


def init_distributed() -> None:
  """jax.distributed.initialize, before any JAX computation, when the run is multi-process."""
  import jax
  timeout = {'heartbeat_timeout_seconds': _HEARTBEAT_TIMEOUT.value}
  if _COORDINATOR.value is not None:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, **timeout)
  elif _DISTRIBUTED.value or (_DISTRIBUTED.value is None and _multi_host_environment()):
    jax.distributed.initialize(**timeout)
  else:
    return
  logging.info('Process %d of %d, %d local of %d devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one voice on the console: process 0's


def _compile_only_host(name: str) -> None:
  """--topology: checks the name, and keeps jax on the CPU, since compiling for the slice needs no
  local device (and off a TPU VM, libtpu would log its failure to find one)."""
  if not _DRY_RUN.value:
    raise ConfigError(f'--topology={name} compiles for a TPU slice without running: add --dry_run')
  from bigjax import topology
  topology.parse(name)
  os.environ['JAX_PLATFORMS'] = 'cpu'
  if 'jax' in sys.modules:  # imported already: the backend starts at first use, still ahead
    sys.modules['jax'].config.update('jax_platforms', 'cpu')


def _sample(config, workdir: str) -> None:
  if _NUM_SAMPLES.value < 1 or _MAX_NEW_TOKENS.value < 1 or _TEMPERATURE.value < 0 or _TOP_K.value < 0 \
      or not 0 < _TOP_P.value <= 1:
    raise ConfigError('--num_samples and --max_new_tokens must be >= 1, --temperature >= 0, '
                      '--top_k >= 0 and 0 < --top_p <= 1')
  from bigjax import decode
  for text in decode.sample_checkpoint(
      config, workdir, _PROMPT.value, num_samples=_NUM_SAMPLES.value,
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
      top_p=_TOP_P.value):
    print(f'--- {_PROMPT.value}{text}', flush=True)


def _explain(config, workdir: str) -> None:
  from bigjax import explain
  request = explain.Request(_METHOD.value, _STEPS.value, _BASELINE.value, _NOISE.value, _SAMPLES.value,
                            _TARGET.value, _IMAGE.value, tuple(_TEXT.value), _SPLIT.value,
                            _NUM_EXAMPLES.value)
  for line in explain.explain_checkpoint(config, workdir, request):
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _predict(config, workdir: str) -> None:
  """--mode=predict|generate|transcribe: one JSON line per input."""
  from bigjax import predict
  inputs, what, run = {
      'predict': (_TEXT.value, '--text="..." to classify', predict.predict_checkpoint),
      'generate': (_TEXT.value, '--text="..." to translate or summarize', predict.generate_checkpoint),
      'transcribe': (_AUDIO.value, '--audio=FILE.wav', predict.transcribe_checkpoint),
  }[_MODE.value]
  if not inputs:
    raise ConfigError(f'--mode={_MODE.value} needs at least one {what}')
  for line in run(config, workdir, inputs):
    print(json.dumps(line, ensure_ascii=False), flush=True)


def run_mode(config, workdir: str) -> None:
  """What --mode (or --dry_run) asks for; raises ConfigError for bad input."""
  from bigjax import quant_eval, train  # jax, flax and TFDS load only for valid input
  if _DRY_RUN.value:
    from bigjax import dry_run
    print(json.dumps(dry_run.report(config, _TOPOLOGY.value)), flush=True)
  elif _MODE.value == 'train':
    train.train_and_evaluate(config, workdir)
  elif _MODE.value == 'sample':
    _sample(config, workdir)
  elif _MODE.value in ('predict', 'generate', 'transcribe'):
    _predict(config, workdir)
  elif _MODE.value == 'explain':
    _explain(config, workdir)
  elif quant_eval.is_quantized(workdir):  # python -m bigjax.quantize's output: its own config.json
    for line in quant_eval.evaluate_folder(workdir):
      print(json.dumps(line), flush=True)
  else:
    train.evaluate_checkpoint(config, workdir)


def main(argv):
  # A bigjax process keeps freed heap memory for XLA:CPU's per-step scratch space: before anything
  # below imports jax and its CPU client starts threads (bigjax/cpu/heap.py says why then).
  cpu.keep_freed_memory_on_cpu()
  logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  spec = _config_spec(sys.argv)
  workdir = _WORKDIR.value or default_workdir(spec)
  config = _CONFIG.value if spec else from_workdir(workdir)
  with one_line_exits():
    validate(config)
    if _TOPOLOGY.value:
      _compile_only_host(_TOPOLOGY.value)
    if _COORDINATOR.value is not None and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
      raise ConfigError('--coordinator_address needs --num_processes and --process_id too')
    init_distributed()
    run_mode(config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
