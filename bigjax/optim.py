"""The optax optimizer a config asks for: schedule, optimizer, clipping, weight decay.

Full-batch gradient descent is `optim.name=sgd` with `train.batch_size=-1`.
"""

import jax
import optax

# name -> (peak lr, decay steps) -> schedule; each starts at the peak lr.
SCHEDULES = {
    'constant': lambda lr, steps: optax.constant_schedule(lr),
    'linear': lambda lr, steps: optax.linear_schedule(lr, 0.0, steps),
    'cosine': optax.cosine_decay_schedule,
    'rsqrt': lambda lr, steps: lambda step: lr / (1.0 + step) ** 0.5,
}
# Schedules whose value at a step does not depend on the schedule's length: for them,
# optim.schedule_steps (and so train.steps) changes nothing.
LENGTH_FREE_SCHEDULES = ('constant', 'rsqrt')


def decayed(params):
  """True for weights that decoupled decay applies to: not norms' scales, not biases (GPT-2)."""
  def keep(path, _):
    return not any(getattr(key, 'key', None) in ('scale', 'bias') for key in path)
  return jax.tree_util.tree_map_with_path(keep, params)


OPTIMIZERS = {
    'sgd': lambda lr, c: optax.sgd(lr),
    'momentum': lambda lr, c: optax.sgd(lr, momentum=c.momentum),
    'nesterov': lambda lr, c: optax.sgd(lr, momentum=c.momentum, nesterov=True),
    'adam': lambda lr, c: optax.adam(lr),
    'adamw': lambda lr, c: optax.adamw(lr, weight_decay=c.weight_decay, mask=decayed),
}


def schedule_steps(optim_config, train_steps: int) -> int:
  """The schedule's length in steps, warmup included: optim.schedule_steps, or train.steps if 0.

  Also takes the plain dict of a saved config.json, where an older run may lack the field."""
  return optim_config.get('schedule_steps', 0) or train_steps


def learning_rate(optim_config, train_steps: int) -> optax.Schedule:
  """Linear warmup for `warmup_steps`, then the named schedule over the rest of
  schedule_steps(optim_config, train_steps); past its end a schedule keeps its final value."""
  c = optim_config
  decay = SCHEDULES[c.schedule](c.lr, max(schedule_steps(c, train_steps) - c.warmup_steps, 1))
  if not c.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, c.lr, c.warmup_steps)
  return optax.join_schedules([warmup, decay], [c.warmup_steps])


def build(optim_config, train_steps: int) -> optax.GradientTransformation:
  c = optim_config
  parts = [optax.clip_by_global_norm(c.clip_norm)] if c.clip_norm else []
  if c.weight_decay and c.name != 'adamw':  # adamw decays decoupled, inside the optimizer
    parts.append(optax.add_decayed_weights(c.weight_decay))
  return optax.chain(*parts, OPTIMIZERS[c.name](learning_rate(c, train_steps), c))


def schedule_count(opt_state) -> jax.Array:
  """The optimizer's own step count, the one its learning rate schedule is evaluated at.

  It differs from the train state's step after a step skipped for a NaN or Inf
  (train.on_nonfinite=skip keeps the old optimizer state, so its count does not advance)."""
  def is_schedule_count(path, _):
    key = path[-1]
    return isinstance(key, optax.tree_utils.NamedTupleKey) and key.tuple_name == 'ScaleByScheduleState'
  count = optax.tree_utils.tree_get(opt_state, 'count', filtering=is_schedule_count)
  if count is None:
    raise ValueError('the optimizer keeps no schedule state (optax.scale_by_schedule): give it a schedule')
  return count
