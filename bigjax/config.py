"""The fields every config has, and the checks run on them before anything else.

Experiment files in experiments/ start from `base_config()` and change what
their experiment is about. Every field here can be overridden on the command
line with `--config.a.b=value`; `validate` turns a bad value into one line that
names the field and what is allowed.
"""

import contextlib
import sys

import ml_collections
from ml_collections import config_dict

# Which mesh axes each logical axis name is split over (None: replicated).
LOGICAL_RULES = (
    ('batch', ('data', 'fsdp')),  # fsdp is data parallelism whose weights are sharded too
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', 'tensor'),
    ('conv_in', 'fsdp'),
    ('conv_out', 'tensor'),
    ('classes', None),
    ('layers', None),  # the stacked axis of scanned layers
    ('length', None),  # sequence positions of activations
)


class ConfigError(ValueError):
  """A config value that cannot work; main.py prints it and exits with 2."""


class RunStopped(RuntimeError):
  """A run that cannot go on (a non-finite loss, a corrupt checkpoint): main.py prints the
  message in one line and exits with `status`."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


def fail(message: str) -> None:
  """Bad input: one line on stderr, exit status 2 (nothing has been written yet)."""
  print(f'bigjax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


@contextlib.contextmanager
def one_line_exits():
  """A command's body: ConfigError exits 2 and RunStopped with its status, each with one line."""
  try:
    yield
  except ConfigError as e:
    fail(str(e))
  except RunStopped as e:
    print(f'bigjax: stopped: {e}', file=sys.stderr, flush=True)
    sys.exit(e.status)


def _augment_config() -> ml_collections.ConfigDict:
  """Image datasets: train-time augmentation on the host, each random choice drawn from
  (seed, step, example), and the eval transform (bigjax/data/images.py)."""
  return ml_collections.ConfigDict({
      'crop': 'none',  # none | random_resized (Inception-style) | pad (pad, then a random crop)
      'image_size': 0,  # train crops and eval centre crops are this size; 0: as stored
      'crop_scale': (0.08, 1.0),  # random_resized: the crop's share of the image area
      'pad': 4,  # pad: pixels on each side
      'flip': False,  # random horizontal flips
  })


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # one seed: init, dropout and data order all derive from it

  c.task = ml_collections.ConfigDict()
  c.task.name = 'classification'
  c.task.loss = 'cross_entropy'  # cross_entropy | mse | binary_cross_entropy
  c.task.label_smoothing = 0.0
  # Classification on images: mix each train example with another (the batch reversed), on the
  # device, with soft targets. Beta(alpha, alpha) mixing weights; 0 turns each off. With both,
  # each step picks one at random.
  c.task.mixup = 0.0
  c.task.cutmix = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'  # the remaining model.* fields go to the model's constructor

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits'
  # None means TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets).
  c.data.data_dir = config_dict.placeholder(str)
  c.data.in_memory = True  # read each split into host memory once; False for datasets that do not fit
  # grain worker processes that read (decode, augment) train batches; 0: one thread in this process,
  # which is faster for small in-memory images.
  c.data.workers = 0
  c.data.prefetch = 2  # train batches read ahead (per worker, with workers)
  c.data.augment = _augment_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'  # sgd | momentum | nesterov | adam | adamw
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'  # constant | linear | cosine | rsqrt
  c.optim.warmup_steps = 0  # linear warmup from 0, before any schedule
  # The schedule's length in steps, warmup included; 0 means train.steps. Set it to extend a
  # linear or cosine run (a longer train.steps) without changing the learning rate it had so far.
  c.optim.schedule_steps = 0
  c.optim.momentum = 0.9  # momentum and nesterov only
  c.optim.weight_decay = 0.0  # adamw: decoupled; other optimizers: L2 added to the gradient
  c.optim.clip_norm = 0.0  # global-norm clipping; 0 turns it off

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 128  # global, over all hosts; -1 = the whole train split
  c.train.eval_every = 500  # steps between evals on the eval split; 0 = only at the end
  c.train.log_every = 100
  # Micro-batches per step: 1/k of the activation memory. The same update as the whole batch (up
  # to float summation order) only without BatchNorm (statistics per micro-batch) and dropout
  # (other masks per micro-batch).
  c.train.grad_accum = 1
  c.train.peak_flops = 0.0  # per device, for MFU; 0: from the device table, or measured on CPU
  # A non-finite loss or gradient norm: stop (exit 3, the last good checkpoint kept) or skip
  # (that update is not applied; train lines count nonfinite_steps).
  c.train.on_nonfinite = 'stop'
  # Which library runs the train step's matmuls on an x86 CPU: xla (YNNPACK/Eigen) or onednn
  # (faster for Transformers, slower for the LSTM's tiny recurrent ones; bigjax/cpu/xla_options.py).
  # Ignored on GPU and TPU.
  c.train.cpu_matmul = 'xla'

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500  # a final checkpoint is always written too
  c.checkpoint.keep = 3
  c.checkpoint.on_corrupt = 'fallback'  # fallback: set it aside, resume the one before | fail: exit 4
  c.checkpoint.init_from = ''  # a run's workdir: start from its params where names and shapes match
  # Resuming with a config that differs from the workdir's config.json in more than SAFE_CHANGES
  # is refused unless this is True.
  c.checkpoint.allow_config_change = False

  c.distill = ml_collections.ConfigDict({
      # Knowledge distillation: a trained run's workdir ('' = off). The student learns from its outputs,
      # softened by the temperature: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss.
      'teacher': '',
      'alpha': 0.5,
      'temperature': 2.0,
      # True: the teacher runs as in training, with the student's random keys, so noise a model puts
      # on its own input (word dropout) drops the same words for both: the teacher's targets are for
      # the input the student sees (Beyer et al., 2022, "consistent" teaching). Its dropout is on too.
      'teacher_noise': False,
  })
  # Quantization-aware training (qwix fake quantization, bigjax/quantize.py): '' (off) | int8 |
  # int8_weights | int4_weights. Export with python -m bigjax.quantize, as for a float run.
  c.quant = ml_collections.ConfigDict({'mode': ''})

  # debug.nan_at_step > 0: that step's loss is NaN (steps count from 1, as logged; tests on_nonfinite)
  c.debug = ml_collections.ConfigDict({'nan_at_step': 0})

  # Device mesh: sizes multiply to the device count; -1 takes what is left.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Logical axis name -> mesh axes (MaxText-style); the first rule for a name wins.
  c.mesh.rules = LOGICAL_RULES

  # parallel.mode: auto: GSPMD partitions the step from the shardings. shard_map: explicit data
  # parallelism, per-device loss and gradients then pmean (mesh.tensor must be 1).
  c.parallel = ml_collections.ConfigDict({'mode': 'auto'})
  return c


def _tuples(value):
  """JSON's lists as the tuples configs hold (mesh.rules, model.features)."""
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _merge(into: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(into.get(key), ml_collections.ConfigDict):
      _merge(into[key], value)
    else:
      into[key] = _tuples(value)


def from_workdir(workdir: str) -> ml_collections.ConfigDict:
  """A run's config.json over today's base_config(): a field added to bigjax since the run started
  gets its default, which is what the run had. ConfigError if the workdir has none."""
  import json  # noqa: PLC0415

  from bigjax import files  # noqa: PLC0415
  path = files.path(workdir) / 'config.json'
  if not path.exists():
    raise ConfigError(f'no config.json in {workdir}: use the --workdir of a trained run')
  config = base_config()
  _merge(config, json.loads(path.read_text()))
  return config


def check(ok: bool, field: str, value, allowed: str) -> None:
  """Raises ConfigError for `config.<field>=<value>` unless ok; `allowed` says what would work."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: {allowed}')


def check_choice(section: ml_collections.ConfigDict, prefix: str, key: str, names) -> None:
  check(section[key] in names, f'{prefix}.{key}', section[key], f'choose one of {", ".join(sorted(names))}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field. Imports registries lazily."""
  from bigjax import data, distill, models, optim, quantize, tasks  # noqa: PLC0415 (keeps flag parsing light)
  from bigjax.cpu import xla_options  # noqa: PLC0415

  def need(ok, field, allowed):
    group, _, key = field.rpartition('.')
    check(ok, field, (config[group] if group else config)[key], allowed)

  need(isinstance(config.seed, int) and config.seed >= 0, 'seed', 'use an integer >= 0')
  check_choice(config.task, 'task', 'name', tasks.TASKS)
  check_choice(config.data, 'data', 'name', data.DATASETS)
  pairs = bool(data.DATASETS[config.data.name].target_feature)
  need(pairs == (config.task.name == 'seq2seq'), 'task.name',
       'use seq2seq for a text pair dataset (and a pair dataset for seq2seq)')
  multi_label = data.DATASETS[config.data.name].multi_label
  need(multi_label == (config.task.name == 'multilabel'), 'task.name',
       'use multilabel for a multi-label dataset (and a multi-label dataset for multilabel)')
  tasks.TASKS[config.task.name].check_config(config.task)
  check_choice(config.model, 'model', 'name', models.MODELS)
  models.check_config(config.model)
  data.check_config(config.data)
  model_fields = {**models.defaults(config.model.name), **config.model}
  if model_fields.get('positions') == 'learned' and 'seq_len' in config.data:
    check(model_fields['max_length'] >= config.data.seq_len, 'model.max_length', model_fields['max_length'],
          f'learned positions need one per token: use >= data.seq_len={config.data.seq_len}')
  check_choice(config.optim, 'optim', 'name', optim.OPTIMIZERS)
  check_choice(config.optim, 'optim', 'schedule', optim.SCHEDULES)
  need(config.optim.lr > 0, 'optim.lr', 'use a learning rate > 0')
  need(config.optim.warmup_steps >= 0, 'optim.warmup_steps', 'use a value >= 0')
  need(config.optim.schedule_steps >= 0, 'optim.schedule_steps', 'use a step count >= 0 (0 = train.steps)')
  need(config.optim.weight_decay >= 0, 'optim.weight_decay', 'use a value >= 0')
  need(config.optim.clip_norm >= 0, 'optim.clip_norm', 'use a value >= 0 (0 = no clipping)')
  need(config.train.steps > 0, 'train.steps', 'use a number of steps > 0')
  need(config.train.batch_size > 0 or config.train.batch_size == -1, 'train.batch_size',
       'use a size > 0, or -1 for the whole train split')
  need(config.train.eval_every >= 0, 'train.eval_every', 'use a step interval >= 0 (0 = only at the end)')
  need(config.train.log_every > 0, 'train.log_every', 'use a step interval > 0')
  need(config.train.grad_accum > 0, 'train.grad_accum', 'use a number of micro-batches > 0')
  need(config.train.batch_size == -1 or config.train.batch_size % config.train.grad_accum == 0,
       'train.grad_accum', f'use a divisor of train.batch_size={config.train.batch_size}')
  need(config.train.peak_flops >= 0, 'train.peak_flops', 'use FLOP/s per device, or 0 for automatic')
  need(config.checkpoint.every > 0, 'checkpoint.every', 'use a step interval > 0')
  need(config.checkpoint.keep > 0, 'checkpoint.keep', 'keep at least 1 checkpoint')
  for axis in ('data', 'fsdp', 'tensor'):
    need(config.mesh[axis] == -1 or config.mesh[axis] > 0, f'mesh.{axis}',
         'use a size > 0, or -1 for the devices left over')
  axes = {'data', 'fsdp', 'tensor', None}
  need(all(len(r) == 2 and isinstance(r[0], str)
           and set(r[1] if isinstance(r[1], tuple) else (r[1],)) <= axes for r in config.mesh.rules),
       'mesh.rules', "use (logical name, mesh axes) pairs; axes: 'data', 'fsdp', 'tensor', a tuple, or None")
  check_choice(config.train, 'train', 'on_nonfinite', ('stop', 'skip'))
  check_choice(config.train, 'train', 'cpu_matmul', xla_options.CPU_MATMULS)
  check_choice(config.checkpoint, 'checkpoint', 'on_corrupt', ('fallback', 'fail'))
  check_choice(config.parallel, 'parallel', 'mode', ('auto', 'shard_map'))
  distill.check_config(config.distill)
  quantize.check_config(config.quant)
  need(config.parallel.mode == 'auto' or config.mesh.tensor == 1, 'mesh.tensor',
       'parallel.mode=shard_map is data parallel only: use mesh.tensor=1, or parallel.mode=auto')
  need(config.parallel.mode == 'auto' or config.mesh.fsdp == 1, 'mesh.fsdp',
       'parallel.mode=shard_map replicates the weights: use mesh.fsdp=1 (mesh.data), or parallel.mode=auto')


# Fields a resumed run may change: how long, how often to log, evaluate and save, where data lives and
# how many processes read it (the same batches), which library runs the CPU matmuls (the same math,
# rounded in another order).
SAFE_CHANGES = ('train.steps', 'train.eval_every', 'train.log_every', 'train.peak_flops',
                'train.on_nonfinite', 'train.cpu_matmul', 'checkpoint.every', 'checkpoint.keep',
                'checkpoint.on_corrupt', 'checkpoint.init_from', 'checkpoint.allow_config_change',
                'data.data_dir', 'data.source_dir', 'data.workers', 'data.prefetch',
                'task.eval_generate_examples', 'debug.nan_at_step')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_changes(saved_json: str, config: ml_collections.ConfigDict) -> list[str]:
  """'model.width: 256 in the workdir, 128 now' for each field outside SAFE_CHANGES that differs.

  Compares what the fields mean: optim.schedule_steps=0 stands for train.steps, so a longer
  train.steps that would stretch a linear or cosine schedule (and make its learning rate jump)
  is a change of optim.schedule_steps; for constant and rsqrt the length changes nothing.
  """
  import json  # noqa: PLC0415

  from bigjax import optim  # noqa: PLC0415 (keeps flag parsing light)
  trees = json.loads(saved_json), json.loads(config.to_json_best_effort())
  raw_new_steps = trees[1]['optim'].get('schedule_steps', 0)
  for tree in trees:
    tree['optim']['schedule_steps'] = optim.schedule_steps(tree['optim'], tree['train']['steps'])
  old, new = _flat(trees[0]), _flat(trees[1])
  # A field added to bigjax after the run started had its default there.
  defaults = _flat(json.loads(base_config().to_json_best_effort()))
  old.update({k: defaults[k] for k in new.keys() - old.keys() if k in defaults})
  if old.get('optim.schedule') in optim.LENGTH_FREE_SCHEDULES and \
      new.get('optim.schedule') in optim.LENGTH_FREE_SCHEDULES:
    old.pop('optim.schedule_steps'), new.pop('optim.schedule_steps')

  def line(k):
    text = f'{k}: {old.get(k, "(absent)")!r} in the workdir, {new.get(k, "(absent)")!r} now'
    if k == 'optim.schedule_steps' and not raw_new_steps:
      text += (f' (optim.schedule_steps=0 follows train.steps, so the {new["optim.schedule"]} learning rate '
               f'would jump; --config.optim.schedule_steps={old[k]} keeps the old schedule)')
    return text
  return [line(k) for k in sorted(set(old) | set(new)) if k not in SAFE_CHANGES and old.get(k) != new.get(k)]
