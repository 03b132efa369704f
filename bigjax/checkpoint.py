"""Orbax checkpoints: train state + data-iterator state + config, one folder per step.

Saves are asynchronous: `save` returns once arrays are copied off the devices,
and the files are written in the background. A save cut short (SIGKILL, lost
host) leaves a temporary folder that Orbax never restores from, so the newest
*complete* checkpoint is always the one resumed.
"""

import os

import grain
import orbax.checkpoint as ocp


def manager(workdir: str, checkpoint_config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.keep, enable_async_checkpointing=True, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, config) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),  # one file per host
      config=ocp.args.JsonSave(config.to_dict()),
  ))


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None):
  """(state, step) from the newest complete checkpoint, or (None, 0) if there is none.

  `abstract_state` holds jax.ShapeDtypeStructs with shardings, so each array is
  read straight into its shards on the right devices. The data iterator, if
  given, is restored in place.
  """
  step = mngr.latest_step()
  if step is None:
    return None, 0
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored['state'], step
