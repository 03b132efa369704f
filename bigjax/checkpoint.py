"""Orbax checkpoints: train state + data-iterator state + config, one folder per step.

Saves are asynchronous: `save` returns once arrays are copied off the devices,
and the files are written in the background. A save cut short (SIGKILL, lost
host) leaves a temporary folder that Orbax never restores from, so the newest
*complete* checkpoint is always the one resumed.

Restoring checks the checkpoint against the config first (a changed width is a one-line
error naming the parameter), then reads it; a checkpoint that cannot be read (truncated
or deleted files) is corrupt: `checkpoint.on_corrupt=fallback` moves it aside to
`<step>.corrupt` and tries the previous one, `fail` stops the run.
"""

import os
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from bigjax.config import ConfigError, RunStopped, config_changes

EXIT_CORRUPT = 4  # on_corrupt=fail found a corrupt checkpoint


def _item_handlers() -> dict:
  """Each item's handler, registered up front so the state's metadata (shapes) reads without a restore."""
  return {'state': ocp.StandardCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler(),
          'config': ocp.JsonCheckpointHandler()}


def manager(workdir: str, checkpoint_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.keep, enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
                               item_handlers=_item_handlers())


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, config) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),  # one file per host
      config=ocp.args.JsonSave(config.to_dict()),
  ))


def _name(entry) -> str:
  for attribute in ('key', 'name', 'idx'):  # dict key, dataclass field, list index
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _path_name(path) -> str:
  """A pytree path as 'params/hidden_0/kernel'."""
  return '/'.join(_name(e) for e in path)


def _leaves_by_name(tree, is_leaf=None) -> dict:
  """'params/hidden_0/kernel' -> leaf, for every leaf of tree."""
  return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf)[0]}


def shapes(tree) -> dict[str, tuple]:
  """'params/hidden_0/kernel' -> shape, for every array of a state, abstract state or metadata tree."""
  leaves = _leaves_by_name(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {name: tuple(leaf.shape) for name, leaf in leaves.items() if hasattr(leaf, 'shape')}


def first_mismatch(saved: dict, wanted: dict) -> str | None:
  """The first difference between a checkpoint's arrays and the config's, in one line, or None."""
  for path, shape in wanted.items():
    if path not in saved:
      return f'{path} {shape} is in this config but not in the checkpoint'
    if saved[path] != shape:
      return f'{path} has shape {saved[path]} in the checkpoint and {shape} in this config'
  extra = [path for path in saved if path not in wanted]
  return f'{extra[0]} {saved[extra[0]]} is in the checkpoint but not in this config' if extra else None


def _state_shapes(mngr, step: int) -> dict:
  metadata = mngr.item_metadata(step)
  if metadata is None or metadata['state'] is None:
    raise ValueError(f'the array metadata of step {step} cannot be read')
  return shapes(metadata['state'])


def _restore_step(mngr, step: int, abstract_state, data_iterator):
  mismatch = first_mismatch(_state_shapes(mngr, step), shapes(abstract_state))
  if mismatch:
    raise ConfigError(f'checkpoint {step} in {mngr.directory} does not fit this config: {mismatch}. '
                      'Use another --workdir, or the config the run was started with')
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  return mngr.restore(step, args=ocp.args.Composite(**items))['state']


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, on_corrupt: str = 'fallback'):
  """(state, step) from the newest checkpoint that reads back, or (None, 0) if there is none.

  `abstract_state` holds jax.ShapeDtypeStructs with shardings, so each array is
  read straight into its shards on the right devices. The data iterator, if
  given, is restored in place.
  """
  _ignore_late_callbacks()  # before any read: a failing one's callbacks may come while it fails
  while (step := mngr.latest_step()) is not None:
    try:
      return _restore_step(mngr, step, abstract_state, data_iterator), step
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 (whatever Orbax, TensorStore or grain raise on bad files)
      reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
      path = os.path.join(mngr.directory, str(step))
      if on_corrupt == 'fail':
        raise RunStopped(f'checkpoint {path} is corrupt ({reason}). Delete or move it to resume from the '
                         'one before, or rerun with --config.checkpoint.on_corrupt=fallback',
                         EXIT_CORRUPT) from e
      logging.warning('Checkpoint %s is corrupt (%s): moved to %s.corrupt; trying the one before.',
                      path, reason, path)
      _set_aside(mngr, path)
  return None, 0


def _ignore_late_callbacks() -> None:
  """After a failed read, TensorStore's callbacks for it still arrive, into the event loop Orbax
  already closed; each would print a 'RuntimeError: Event loop is closed' traceback. Drop those
  (installed once per process; every other unraisable exception is printed as before)."""
  if getattr(sys.unraisablehook, 'bigjax_filter', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)):
      previous(unraisable)
  hook.bigjax_filter = True
  sys.unraisablehook = hook


def _set_aside(mngr, path: str) -> None:
  """Renames a corrupt step folder (process 0: the filesystem is shared), so no later run reads it
  and the step can be saved again."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('bigjax: corrupt checkpoint found')
  if jax.process_index() == 0:
    target, n = path + '.corrupt', 1
    while os.path.exists(target):  # the same step may go bad twice
      target, n = f'{path}.corrupt{n}', n + 1
    os.replace(path, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('bigjax: corrupt checkpoint moved')
  mngr.reload()


def refuse_changed_config(workdir: str, config, abstract_state) -> None:
  """ConfigError if workdir holds checkpoints of a run whose config.json differs from config
  outside config.SAFE_CHANGES, unless checkpoint.allow_config_change. The message names the
  changed fields and, if the newest checkpoint no longer fits, the first parameter that does not."""
  saved = os.path.join(workdir, 'config.json')
  ckpt_dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  if config.checkpoint.allow_config_change or not os.path.exists(saved) or not (
      os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir))):
    return
  with open(saved) as f:
    changes = config_changes(f.read(), config)
  if not changes:
    return
  more = f' (and {len(changes) - 3} more)' if len(changes) > 3 else ''
  reader = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(create=False),
                                 item_handlers=_item_handlers())
  step, mismatch = reader.latest_step(), None
  try:
    mismatch = step is not None and first_mismatch(_state_shapes(reader, step), shapes(abstract_state))
  except Exception:  # noqa: BLE001 (unreadable: the restore will report it as corrupt)
    mismatch = None
  finally:
    reader.close()
  fits = f' ({mismatch} at step {step})' if mismatch else ''
  raise ConfigError(f'{workdir} holds a run with another config: {"; ".join(changes[:3])}{more}{fits}. Use '
                    'another --workdir, or resume anyway with --config.checkpoint.allow_config_change=True')


def init_from(path: str, params):
  """checkpoint.init_from: params with every leaf that another run's newest checkpoint has (same
  path, same shape) replaced by its value, placed with the leaf's sharding. Logs what it skipped."""
  values, step, skipped = load_params(path, params)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_path_name(p) for p, _ in leaves]
  new = [jax.device_put(values[n].astype(leaf.dtype), leaf.sharding) if n in values else leaf
         for n, (_, leaf) in zip(names, leaves)]
  logging.info('Initialized %d of %d params from %s (step %d).%s', len(values), len(leaves), path, step,
               ''.join(f'\n  skipped {line}' for line in skipped))
  return jax.tree_util.tree_unflatten(treedef, new)


def load_params(path: str, abstract_params):
  """For checkpoint.init_from: the params of the newest checkpoint of another run (its workdir),
  where path and shape match this config's; the rest keep their fresh init. Returns (a dict
  'hidden_0/kernel' -> host array of the matches, the step read, one line per param skipped).
  """
  directory = path if os.path.basename(os.path.normpath(path)) == 'checkpoints' else \
      os.path.join(path, 'checkpoints')
  if not os.path.isdir(directory):
    raise ConfigError(f'config.checkpoint.init_from={path!r}: no checkpoints in {directory}')
  source = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=_item_handlers())
  step = source.latest_step()
  if step is None:
    raise ConfigError(f'config.checkpoint.init_from={path!r}: no complete checkpoint in {directory}')
  state_dir = os.path.join(source.directory, str(step), 'state')
  saved = _state_shapes(source, step)
  saved_params = {k[len('params/'):]: v for k, v in saved.items() if k.startswith('params/')}
  wanted = shapes(abstract_params)
  matches = [k for k, shape in wanted.items() if saved_params.get(k) == shape]
  skipped = [f'{k}: {saved_params[k]} there, {shape} here' if k in saved_params else f'{k}: not there'
             for k, shape in wanted.items() if k not in matches]
  skipped += [f'{k}: only there' for k in saved_params if k not in wanted]
  restored = ocp.StandardCheckpointer().restore(state_dir)  # host arrays; placed by the caller
  flat = {k[len('params/'):]: v for k, v in _leaves_by_name(restored).items() if k.startswith('params/')}
  source.close()
  return {k: np.asarray(flat[k]) for k in matches}, step, skipped
