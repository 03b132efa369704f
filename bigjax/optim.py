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


def learning_rate(optim_config, total_steps: int) -> optax.Schedule:
  """Linear warmup for `warmup_steps`, then the named schedule over the remaining steps."""
  c = optim_config
  decay = SCHEDULES[c.schedule](c.lr, max(total_steps - c.warmup_steps, 1))
  if not c.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, c.lr, c.warmup_steps)
  return optax.join_schedules([warmup, decay], [c.warmup_steps])


def build(optim_config, total_steps: int) -> optax.GradientTransformation:
  c = optim_config
  parts = [optax.clip_by_global_norm(c.clip_norm)] if c.clip_norm else []
  if c.weight_decay and c.name != 'adamw':  # adamw decays decoupled, inside the optimizer
    parts.append(optax.add_decayed_weights(c.weight_decay))
  return optax.chain(*parts, OPTIMIZERS[c.name](learning_rate(c, total_steps), c))
