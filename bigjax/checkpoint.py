"""Orbax checkpoints: train state + config, one folder per step.

Saves are asynchronous: `save` returns once arrays are copied off the devices,
and the files are written in the background. A save cut short (SIGKILL, lost
host) leaves a temporary folder that Orbax never restores from, so the newest
*complete* checkpoint is always the one resumed. The data position is not saved:
batch i is a function of i (bigjax/data/pipeline.py), so the restored step says
where the data resumes, whatever the number of hosts that saved it.

Restoring checks the checkpoint against the config first (a changed width is a one-line
error naming the parameter), then reads it. A step that does not read back gets one of
two verdicts, and every host agrees on it before anything is renamed:
- corrupt: a file of the complete step folder is missing or does not decode (truncated,
  garbage). Training with `checkpoint.on_corrupt=fallback` moves the folder aside to
  `<step>.corrupt` and tries the one before; `fail`, and the read-only modes (eval,
  sample, predict), stop with EXIT_CORRUPT and touch nothing.
- unreadable: anything else (a permission or I/O error, a storage timeout). Nothing says the
  checkpoint is bad, so the run stops with EXIT_UNREADABLE naming the file, and touches nothing.
"""

import json
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from bigjax import files
from bigjax.config import ConfigError, RunStopped, config_changes

EXIT_CORRUPT = 4  # a corrupt checkpoint that on_corrupt=fail or a read-only mode will not set aside
EXIT_UNREADABLE = 5  # a checkpoint that could not be read for a reason other than its contents

# Verdicts on reading a step, in order of precedence when hosts differ.
OK, MISMATCH, CORRUPT, UNREADABLE = 0, 1, 2, 3
# TensorStore's status codes that mean the bytes on disk are missing or wrong (a read that
# could not happen says PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, ...).
_CORRUPT_STATUSES = ('NOT_FOUND', 'DATA_LOSS', 'OUT_OF_RANGE', 'FAILED_PRECONDITION', 'INVALID_ARGUMENT')
_STATUS = re.compile(r'([A-Z_]+): ')
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


class Missing(FileNotFoundError):
  """A file that every complete step folder has is not there."""


def _item_handlers() -> dict:
  """Each item's handler, registered up front so a step's items are known without a restore."""
  return {'state': ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler()}


def manager(workdir: str, checkpoint_config, read_only: bool = False) -> ocp.CheckpointManager:
  """The workdir's checkpoints; read_only (eval, sample, predict) never writes, renames or deletes."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else checkpoint_config.keep, enable_async_checkpointing=not read_only,
      create=not read_only, read_only=read_only, save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(files.path(workdir) / 'checkpoints', options=options,
                               item_handlers=_item_handlers())


def save(mngr: ocp.CheckpointManager, step: int, state, config) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
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


def _state_dir(directory, step: int) -> epath.Path:
  """A step's state folder; Missing if a file that every complete one has is not there."""
  state_dir = epath.Path(directory) / str(step) / 'state'
  for required in (state_dir, state_dir / '_METADATA'):
    if not required.exists():
      raise Missing(f'{required} is missing')
  return state_dir


def _state_shapes(state_dir: epath.Path) -> dict:
  handler = ocp.StandardCheckpointHandler()
  try:
    return shapes(handler.metadata(state_dir))
  finally:
    handler.close()


def _read(state_dir: epath.Path, abstract_state):
  """The state, read by this host alone: Orbax's Checkpointer would wait at a barrier that a host
  whose read failed never reaches, so the hosts meet in `_agree` instead."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.restore(state_dir, args=ocp.args.StandardRestore(abstract_state))
  finally:
    handler.close()


def _causes(error):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _tensorstore_reason(status: str, text: str) -> str:
  """TensorStore's message cut to its status, the innermost file it names, and what went wrong."""
  text = text.split(' [tensorstore_spec', maxsplit=1)[0]
  named, detail = _LOCAL_FILE.findall(text), text.rsplit('": ', 1)[-1]
  return f'{status} in {named[-1]}: {detail}' if named else text


def verdict(error: BaseException) -> tuple[int, str]:
  """(CORRUPT or UNREADABLE, one line of why, naming the file) for an exception raised while
  reading a step."""
  for cause in _causes(error):
    line = str(cause).splitlines()[0][:400] if str(cause) else ''
    if isinstance(cause, (FileNotFoundError, json.JSONDecodeError)):
      return CORRUPT, f'{type(cause).__name__}: {line}'
    if isinstance(cause, OSError):
      return UNREADABLE, f'{type(cause).__name__}: {line}'
    status = _STATUS.match(str(cause))
    if status:
      kind = CORRUPT if status.group(1) in _CORRUPT_STATUSES else UNREADABLE
      return kind, _tensorstore_reason(status.group(1), str(cause).splitlines()[0])[:400]
  return UNREADABLE, f'{type(error).__name__}: {str(error).splitlines()[0][:400] if str(error) else ""}'


def _agree(mine: int) -> tuple[int, bool]:
  """(the verdict that holds for every host, whether it is this host's own): the worst of all."""
  if jax.process_count() == 1:
    return mine, True
  verdicts = np.asarray(multihost_utils.process_allgather(np.array([mine], np.int32))).reshape(-1)
  return int(verdicts.max()), int(verdicts.max()) == mine


def _try_step(directory, step: int, abstract_state):
  """(verdict, state or None, reason) of reading one step on this host."""
  try:
    state_dir = _state_dir(directory, step)
    mismatch = first_mismatch(_state_shapes(state_dir), shapes(abstract_state))
    if mismatch:
      return MISMATCH, None, mismatch
    return OK, _read(state_dir, abstract_state), ''
  except Exception as e:  # noqa: BLE001 (whatever Orbax or TensorStore raise: classified, not swallowed)
    kind, reason = verdict(e)
    step_dir = files.join(directory, str(step))
    return kind, None, reason if step_dir in reason else f'{reason}; reading {step_dir}'


def restore(mngr: ocp.CheckpointManager, abstract_state, on_corrupt: str = 'fallback',
            read_only: bool = False):
  """(state, step) from the newest checkpoint that reads back, or (None, 0) if there is none.

  `abstract_state` holds jax.ShapeDtypeStructs with shardings, so each array is read
  straight into its shards on the right devices. A corrupt step is set aside only when
  training with on_corrupt=fallback; anything else stops the run (see the module's doc).
  """
  _ignore_late_callbacks()  # before any read: a failing one's callbacks may come while it fails
  while (step := mngr.latest_step()) is not None:
    path = files.join(mngr.directory, str(step))
    mine, state, reason = _try_step(mngr.directory, step, abstract_state)
    agreed, own = _agree(mine)
    if agreed == OK:
      return state, step
    if not own:
      reason = 'another process could not read it: see that process\'s log'
    if agreed == MISMATCH:
      raise ConfigError(f'checkpoint {step} in {mngr.directory} does not fit this config: {reason}. '
                        'Use another --workdir, or the config the run was started with')
    if agreed == UNREADABLE:
      raise RunStopped(f'checkpoint {path} could not be read ({reason}); it was left as it is. Fix the '
                       'storage or permissions and run the same command again', EXIT_UNREADABLE)
    if read_only or on_corrupt == 'fail':
      fix = ('--mode=train with --config.checkpoint.on_corrupt=fallback sets it aside' if read_only else
             'rerun with --config.checkpoint.on_corrupt=fallback')
      raise RunStopped(f'checkpoint {path} is corrupt ({reason}); it was left as it is. Delete or move it '
                       f'to use the one before, or {fix}', EXIT_CORRUPT)
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
  and the step can be saved again. Every host calls it: they agreed on the verdict."""
  if jax.process_index() == 0:
    target, n = path + '.corrupt', 1
    while epath.Path(target).exists():  # the same step may go bad twice
      target, n = f'{path}.corrupt{n}', n + 1
    epath.Path(path).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('bigjax: corrupt checkpoint moved')
  mngr.reload()


def write_config(workdir, config) -> None:
  """The resolved config as workdir/config.json, replaced whole (refuse_changed_config reads it)."""
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  files.write_text(files.join(workdir, 'config.json'), text)


def refuse_changed_config(workdir: str, config, abstract_state) -> None:
  """ConfigError if workdir holds checkpoints of a run whose config.json differs from config
  outside config.SAFE_CHANGES, unless checkpoint.allow_config_change. The message names the
  changed fields and, if the newest checkpoint no longer fits, the first parameter that does not."""
  saved = files.path(workdir) / 'config.json'
  ckpt_dir = files.path(workdir) / 'checkpoints'
  if config.checkpoint.allow_config_change or not saved.exists() or not (
      ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
    return
  changes = config_changes(saved.read_text(), config)
  if not changes:
    return
  more = f' (and {len(changes) - 3} more)' if len(changes) > 3 else ''
  reader = manager(workdir, config.checkpoint, read_only=True)
  step, mismatch = reader.latest_step(), None
  try:
    mismatch = step is not None and first_mismatch(_state_shapes(_state_dir(ckpt_dir, step)),
                                                   shapes(abstract_state))
  except Exception:  # noqa: BLE001 (unreadable: the restore reports it, with its verdict)
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
  directory = files.path(path)
  if directory.name != 'checkpoints':
    directory = directory / 'checkpoints'
  if not directory.is_dir():
    raise ConfigError(f'config.checkpoint.init_from={path!r}: no checkpoints in {directory}')
  source = ocp.CheckpointManager(directory, item_handlers=_item_handlers(),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
  step = source.latest_step()
  source.close()
  if step is None:
    raise ConfigError(f'config.checkpoint.init_from={path!r}: no complete checkpoint in {directory}')
  state_dir = _state_dir(directory, step)
  saved = _state_shapes(state_dir)
  saved_params = {k[len('params/'):]: v for k, v in saved.items() if k.startswith('params/')}
  wanted = shapes(abstract_params)
  matches = [k for k, shape in wanted.items() if saved_params.get(k) == shape]
  skipped = [f'{k}: {saved_params[k]} there, {shape} here' if k in saved_params else f'{k}: not there'
             for k, shape in wanted.items() if k not in matches]
  skipped += [f'{k}: only there' for k in saved_params if k not in wanted]
  restored = ocp.StandardCheckpointer().restore(state_dir)  # host arrays; placed by the caller
  flat = {k[len('params/'):]: v for k, v in _leaves_by_name(restored).items() if k.startswith('params/')}
  return {k: np.asarray(flat[k]) for k in matches}, step, skipped


def variables_mismatch(path: str, step: int, abstract: dict) -> str | None:
  """How another run's checkpoint `step` differs from `abstract` ({'params', 'model_state'}) in
  shapes, in one line, or None: opt_state and the counters are not compared."""
  saved = _state_shapes(_state_dir(files.path(path) / 'checkpoints', step))
  saved = {k: v for k, v in saved.items() if k.startswith(('params/', 'model_state/'))}
  return first_mismatch(saved, shapes(abstract))


def read_variables(path: str, step: int, abstract: dict) -> dict:
  """Another run's {'params', 'model_state'} at `step`, placed as `abstract` (ShapeDtypeStructs with
  shardings) says: a distillation teacher. Read on the host, as checkpoint.init_from reads."""
  restored = ocp.StandardCheckpointer().restore(_state_dir(files.path(path) / 'checkpoints', step))
  flat = _leaves_by_name(restored)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  placed = [jax.device_put(np.asarray(flat[_path_name(p)]).astype(leaf.dtype), leaf.sharding)
            for p, leaf in leaves]
  logging.info('Read the teacher from %s (step %d): %d arrays.', path, step, len(placed))
  return jax.tree_util.tree_unflatten(treedef, placed)
