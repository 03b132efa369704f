"""Knowledge distillation (Hinton et al., 2015): a student trained against a frozen teacher.

config.distill.teacher is a trained run's workdir. Its own config.json says what the teacher is;
its checkpoint's params (and BatchNorm statistics) are read once, placed by the student's sharding
rules, and passed to the jitted train step as an argument that gets no gradient and no optimizer
state. The student's checkpoints never hold them: workdir/teacher.json names the teacher's path
and step, and a resumed run reads that same step again.

The loss, on whatever the task calls its logits (a class's, each token's, each frame's):

  alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

T^2 keeps the soft term's gradient on the scale of the hard one's as T grows. A task says which
positions count through `distill_logits(outputs, batch) -> (logits (..., classes), weights (...))`.
"""

import json
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bigjax import checkpoint, files, models, sharding
from bigjax.config import ConfigError, check, from_workdir
from bigjax.data import tokenizers


class Teacher(NamedTuple):
  model: nn.Module
  abstract: Any  # {'params', 'model_state'} of ShapeDtypeStructs carrying the student mesh's shardings
  path: str
  step: int


def check_config(distill_config) -> None:
  check(isinstance(distill_config.teacher, str), 'distill.teacher', distill_config.teacher,
        "use a trained run's workdir, or '' for no distillation")
  check(0 <= distill_config.alpha <= 1, 'distill.alpha', distill_config.alpha, 'use a weight in [0, 1]')
  check(distill_config.temperature > 0, 'distill.temperature', distill_config.temperature, 'use a value > 0')


def tokenizer_source(config, own: str | None) -> str | None:
  """The tokenizer a run reads text with: its own once saved, else its teacher's, so the two share one."""
  if own and files.path(own).exists() or not config.distill.teacher:
    return own
  return files.join(config.distill.teacher, 'tokenizer')


def _step(config, workdir: str | None) -> int:
  """The teacher's step: the one this run started with (teacher.json), else its newest."""
  path = config.distill.teacher
  pinned = files.path(workdir) / 'teacher.json' if workdir else None
  if pinned and pinned.exists():
    return json.loads(pinned.read_text())['step']
  step = None
  if (files.path(path) / 'checkpoints').is_dir():
    mngr = checkpoint.manager(path, config.checkpoint, read_only=True)
    step = mngr.latest_step()
    mngr.close()
  if step is None:
    raise ConfigError(f'config.distill.teacher={path!r}: no complete checkpoint there; train it first')
  return step


def teacher(config, workdir, *, dataset, task, mesh, rules, init) -> Teacher | None:
  """The teacher's model and abstract variables, checked against the student before any compile.
  `init(model)`: the model's variables as the trainer initializes them (train.init_variables)."""
  path = config.distill.teacher
  if not path:
    return None
  prefix = f'config.distill.teacher={path!r}'
  if task.distill_logits is None:
    raise ConfigError(f'{prefix}: task {config.task.name!r} has no distillation targets')
  try:
    tconfig = from_workdir(path)
  except ConfigError as e:
    raise ConfigError(f'{prefix}: {e}') from None
  if tconfig.task.name != config.task.name:
    raise ConfigError(f'{prefix}: the teacher is a {tconfig.task.name} run, the student {config.task.name}')
  if dataset.tokenizer is not None:
    theirs = files.join(path, 'tokenizer')
    if not files.path(theirs).exists() or \
        tokenizers.fingerprint(tokenizers.load(theirs)) != tokenizers.fingerprint(dataset.tokenizer):
      raise ConfigError(f'{prefix}: the teacher reads text with another tokenizer; a student shares its '
                        "teacher's (start the student in a new --workdir)")
  vocab = dataset.tokenizer.vocab_size if dataset.tokenizer else 0
  with sharding.active(mesh, ()):
    model = models.build(tconfig.model, dataset.num_classes, vocab)
  def split():
    variables = init(model)
    return {'params': variables.pop('params'), 'model_state': dict(variables)}
  with sharding.active(mesh, rules):
    boxed = jax.eval_shape(split)
  theirs = nn.meta.unbox(boxed)
  step = _step(config, workdir)
  mismatch = checkpoint.variables_mismatch(path, step, theirs)
  if mismatch:
    raise ConfigError(f'{prefix}: its checkpoint {step} does not fit its config with this data: {mismatch}')
  shardings = sharding.tree_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), theirs, shardings)
  return Teacher(model, abstract, path, step)


def restore(t: Teacher | None) -> dict:
  """The teacher's variables, read from its checkpoint onto the student's devices ({} without one)."""
  if t is None:
    return {}
  return checkpoint.read_variables(t.path, t.step, t.abstract)


def record(t: Teacher | None, workdir: str) -> None:
  """workdir/teacher.json: which teacher, and which of its steps, this run learns from."""
  if t is not None:
    files.write_text(files.join(workdir, 'teacher.json'), json.dumps({'path': t.path, 'step': t.step}) + '\n')


def kl_loss(student_logits, teacher_logits, weights, temperature: float):
  """T^2 * KL(teacher_T || student_T), the weighted mean over positions."""
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  log_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  kl = optax.losses.kl_divergence_with_log_targets(log_student, log_teacher)
  return temperature ** 2 * (kl * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def objective(task, t: Teacher | None, distill_config):
  """(outputs, batch, frozen, rngs) -> (loss, metrics): the task's loss, blended with the teacher's;
  rngs are the student's forward pass's keys."""
  if t is None:
    return lambda outputs, batch, frozen, rngs: task.loss(outputs, batch)
  alpha, temperature, noise = distill_config.alpha, distill_config.temperature, distill_config.teacher_noise

  def loss(outputs, batch, frozen, rngs):
    task_loss, metrics = task.loss(outputs, batch)
    variables = {'params': frozen['params'], **frozen['model_state']}
    inputs = task.model_inputs(batch)
    if noise:  # training mode: its statistics' updates (BatchNorm) are dropped, it stays frozen
      taught, _ = t.model.apply(variables, **inputs, train=True, rngs=rngs,
                                mutable=list(frozen['model_state']))
    else:
      taught = t.model.apply(variables, **inputs, train=False)
    student_logits, weights = task.distill_logits(outputs, batch)
    teacher_logits, _ = task.distill_logits(jax.lax.stop_gradient(taught), batch)
    soft = kl_loss(student_logits, teacher_logits, weights, temperature)
    value = alpha * soft + (1 - alpha) * task_loss
    return value, {**metrics, 'loss': value, 'task_loss': task_loss, 'distill_loss': soft}
  return loss
