"""The one training loop: init, train_step, eval_step, checkpoints, logs.

Every task and model goes through here. A task (bigjax/tasks) says what the model
is called with and supplies the loss and metrics; this file never asks which task it runs.
"""

import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import struct

from bigjax import (
  checkpoint,
  data,
  distill,
  evaluate,
  flops,
  models,
  optim,
  parallel,
  preemption,
  quantize,
  sharding,
  tasks,
  writers,
)
from bigjax.config import ConfigError, RunStopped
from bigjax.cpu import xla_options
from bigjax.data import pipeline

EXIT_NONFINITE = 3  # train.on_nonfinite=stop met a NaN or Inf


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  model_state: Any  # the model's other collections, e.g. BatchNorm's batch_stats
  opt_state: Any
  nonfinite_steps: jax.Array  # steps whose loss or gradient was NaN or Inf (skipped or stopped at)


class Setup(NamedTuple):
  """Everything a run needs before its first step, built from the config alone."""
  mesh: jax.sharding.Mesh
  rules: tuple  # logical axis name -> mesh axes
  dataset: data.Dataset
  model: nn.Module
  task: tasks.Task
  tx: optax.GradientTransformation
  batch_size: int  # global
  abstract_state: TrainState  # of ShapeDtypeStructs with shardings: what a restore fills in
  state_shardings: TrainState  # of NamedShardings
  init: Callable[[], TrainState]  # jitted; creates the state already sharded
  rngs: dict  # each random stream's key (stream_keys), made here, outside any mesh of compile-only devices
  teacher: distill.Teacher | None  # config.distill.teacher's model and abstract variables
  frozen: Any = None  # what the train step reads but never trains: the teacher's variables once read


def _example_batch(dataset) -> dict:
  """One preprocessed train example: the shapes and dtypes of every batch."""
  return dataset.preprocess(dataset.splits['train'].read([0]))


# Random streams besides parameter init, each folded with the step (and the micro-batch, and the
# device under shard_map): a resumed run draws exactly what an uninterrupted one would.
RNG_STREAMS = ('dropout', 'augment')


def stream_keys(seed: int) -> dict:
  """Each stream's key; dropout's is the seed's second key, as it always was."""
  base = jax.random.split(jax.random.key(seed))[1]
  return {name: jax.random.fold_in(base, i) if i else base for i, name in enumerate(RNG_STREAMS)}


def init_variables(model: nn.Module, task, example: dict, key) -> dict:
  """model.init on zeros shaped like one batch (only shapes matter to init), every stream from key."""
  zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in example.items()}
  return model.init({'params': key, **dict.fromkeys(RNG_STREAMS, key)}, **task.model_inputs(zeros),
                    train=False)


def tokenizer_path(workdir: str | None) -> str | None:
  """Where a run keeps its tokenizer: text is read the same way by every later run in the workdir."""
  return str(epath.Path(workdir) / 'tokenizer') if workdir else None


def setup(config, workdir: str | None = None, dataset: data.Dataset | None = None,
          devices=None, teacher: bool = False) -> Setup:
  """Checks the config against the devices and data, and builds (but does not run) init.

  Raises ConfigError for anything that cannot work, before any compile and
  before anything is written. A text dataset uses the tokenizer saved in workdir, if any.
  `dataset`: one already loaded (or a placeholder of its shapes, for --dry_run); `devices`: the
  mesh's, if not jax.devices() (a TPU slice's compile-only devices, for --dry_run --topology);
  `teacher`: also check and describe config.distill.teacher (training; other modes never read it).
  """
  mesh = sharding.make_mesh(config.mesh, devices)
  dataset = dataset or data.load(config.data, distill.tokenizer_source(config, tokenizer_path(workdir)))
  batch_size = config.train.batch_size
  if batch_size == -1:  # full-batch gradient descent
    batch_size = len(dataset.splits['train'])
  # The mesh spans every host's devices, so its batch axes already count the hosts.
  split = sharding.batch_split(mesh) * config.train.grad_accum
  if batch_size % split:
    raise ConfigError(f'config.train.batch_size={batch_size} is invalid: use a multiple of {split} '
                      f'(mesh data x fsdp over all hosts\' devices, times train.grad_accum)')
  if config.data.get('bucket', 0) and batch_size > len(dataset.splits['train']):
    raise ConfigError(f'config.train.batch_size={batch_size} is invalid: bucketing needs a train split '
                      f'of at least one batch ({len(dataset.splits["train"])} examples)')
  with sharding.active(mesh, ()):  # the model's defaults are the mesh's platform's
    model = models.build(config.model, dataset.num_classes,
                         dataset.tokenizer.vocab_size if dataset.tokenizer else 0)
  model = quantize.for_training(model, config.quant.mode)
  task = tasks.build(config.task, dataset)
  tx = optim.build(config.optim, config.train.steps)
  length = optim.schedule_steps(config.optim, config.train.steps)
  if length < config.train.steps and config.optim.schedule not in optim.LENGTH_FREE_SCHEDULES:
    final = float(optim.learning_rate(config.optim, config.train.steps)(length))
    logging.warning('optim.schedule_steps=%d < train.steps=%d: the %s learning rate stays at its final '
                    'value, %g, for the last %d steps.', length, config.train.steps, config.optim.schedule,
                    final, config.train.steps - length)
  init_key = jax.random.split(jax.random.key(config.seed))[0]
  example = _example_batch(dataset)

  def boxed_init():
    variables = init_variables(model, task, example, init_key)
    params = variables.pop('params')
    # Optimizer state built from boxed params keeps their logical axis names.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                      opt_state=tx.init(params), nonfinite_steps=jnp.zeros((), jnp.int32))

  rules = tuple(config.mesh.rules)
  with sharding.active(mesh, rules):
    boxed = jax.eval_shape(boxed_init)
  sharding.warn_replicated(boxed.params, mesh, rules)
  shardings = sharding.tree_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  # Created already sharded: no array is ever whole on one device.
  init = jax.jit(lambda: nn.meta.unbox(boxed_init()), out_shardings=shardings)
  # Only training reads the teacher: a student evaluates, predicts and exports without it.
  teacher = distill.teacher(config, workdir, dataset=dataset, task=task, mesh=mesh, rules=rules,
                            init=lambda m: init_variables(m, task, example, init_key)) if teacher else None
  return Setup(mesh, rules, dataset, model, task, tx, batch_size, abstract, shardings, init,
               stream_keys(config.seed), teacher, teacher.abstract if teacher else {})


def make_train_step(s: Setup, config, compiler_options=None):
  """train_step(state, batch) -> (state, metrics), jitted; s.frozen is passed along."""
  step = _jit_train_step(s, config, compiler_options)
  return lambda state, batch: step(state, batch, s.frozen)


def _jit_train_step(s: Setup, config, compiler_options=None):
  """The jitted train_step(state, batch, frozen): frozen is s.frozen's tree, never trained."""
  keys = s.rngs
  schedule = optim.learning_rate(config.optim, config.train.steps)
  objective = distill.objective(s.task, s.teacher, config.distill)

  def grads_and_metrics(params, model_state, batch, rngs, frozen):
    def loss_fn(params):
      outputs, new_model_state = s.model.apply(
          {'params': params, **model_state}, **s.task.model_inputs(batch), train=True,
          rngs=rngs, mutable=list(model_state))
      loss, metrics = objective(outputs, batch, frozen, rngs)
      return loss, (metrics, dict(new_model_state))
    grads, (metrics, new_model_state) = jax.grad(loss_fn, has_aux=True)(params)
    return grads, metrics, new_model_state

  if config.train.grad_accum > 1:
    grads_and_metrics = parallel.accumulate(grads_and_metrics, config.train.grad_accum)
  if config.parallel.mode == 'shard_map':
    grads_and_metrics = parallel.data_parallel(grads_and_metrics, s.mesh)

  nan_at_step, skip = config.debug.nan_at_step, config.train.on_nonfinite == 'skip'

  def train_step(state: TrainState, batch, frozen):
    rngs = parallel.fold_rngs(keys, state.step)  # a resumed run continues the same sequence
    batch = s.task.augment(batch, rngs['augment'])  # on the whole global batch, before micro-batches
    grads, metrics, model_state = grads_and_metrics(state.params, state.model_state, batch, rngs, frozen)
    if nan_at_step > 0:  # debug: that step's loss, and so its gradient, is NaN
      poison = jnp.where(state.step + 1 == nan_at_step, jnp.nan, 1.0)  # steps count from 1 in the logs
      grads = jax.tree.map(lambda g: g * poison, grads)
      metrics = {**metrics, 'loss': metrics['loss'] * poison}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                     model_state=model_state, opt_state=opt_state,
                     nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    if skip:  # a non-finite step changes nothing but the counters (one select over the state)
      keep = lambda new_tree, old_tree: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_tree, old_tree)
      new = new.replace(params=keep(new.params, state.params), opt_state=keep(new.opt_state, state.opt_state),
                        model_state=keep(new.model_state, state.model_state))
    # The rate the optimizer used: its own count, which a skipped step does not advance.
    metrics = {**metrics, 'lr': schedule(optim.schedule_count(state.opt_state)), 'grad_norm': grad_norm,
               'nonfinite_steps': new.nonfinite_steps}
    return new, metrics

  batch = sharding.batch_sharding(s.mesh)
  frozen = jax.tree.map(lambda x: x.sharding, s.frozen)
  return jax.jit(train_step, in_shardings=(s.state_shardings, batch, frozen),
                 out_shardings=(s.state_shardings, sharding.replicated(s.mesh)), donate_argnums=0,
                 compiler_options=compiler_options)


def compile_train_step(s: Setup, config):
  """(train_step, compiled): the train step, and its executable compiled ahead of time for
  the global batch's shapes and shardings, which calls of those shapes reuse. The executable also
  reports XLA's memory and FLOP analysis (--dry_run, MFU). train.cpu_matmul picks the CPU matmuls.
  """
  example = _example_batch(s.dataset)
  batch_sharding = sharding.batch_sharding(s.mesh)
  batch = {k: jax.ShapeDtypeStruct((s.batch_size, *v.shape[1:]), v.dtype, sharding=batch_sharding)
           for k, v in example.items()}
  matmuls = xla_options.matmuls_for(config.train.cpu_matmul, config.model.get('dropout', 0.0))
  frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), s.frozen)
  step, compiled = xla_options.jit_and_compile(lambda options: _jit_train_step(s, config, options),
                                               (s.abstract_state, batch, frozen), matmuls)
  return (lambda state, batch: step(state, batch, s.frozen)), compiled


def model_flops(s: Setup, config, xla_flops: float) -> float:
  """One step's model FLOPs (flops.py's convention), or XLA's count for a model without a formula."""
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params))
  example = _example_batch(s.dataset)
  targets = example['targets'].shape[1:] if 'targets' in example else None
  per_example = models.flops_per_example(config.model, num_params, example['inputs'].shape[1:], targets)
  return per_example * s.batch_size if per_example else xla_flops


def _throughput(s: Setup, config, compiled_step):
  """Returns steps/s -> {'<units>_per_s', 'mfu'} for the train log, and logs the FLOPs behind it."""
  units, per_example = s.task.units
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(s.abstract_state.params))
  xla = flops.xla_flops(compiled_step)
  model = model_flops(s, config, xla)
  peak, source = flops.peak_flops(config.train.peak_flops)
  logging.info('%s parameters; model FLOPs per step %.4g (XLA counts %.4g); peak %.4g FLOP/s (%s).',
               f'{num_params:,}', model, xla, peak, source)

  def rates(steps_per_s: float, length_fraction: float = 1.0) -> dict:
    """length_fraction: the mean batch length over the full one (bucketing cuts batches short,
    and FLOPs scale with length; quadratic attention is counted as linear, a small overstatement)."""
    out = {f'{units}_per_s': steps_per_s * s.batch_size * per_example}
    if peak:
      out['mfu'] = model * length_fraction * steps_per_s / peak
    return out
  return rates


def _interval_means(pending: list) -> tuple[dict, float]:
  """The mean of each train metric over a log interval's finite values (counters: their last
  value), and the mean batch-length fraction. A step skipped for a NaN or Inf (on_nonfinite=skip)
  shows in nonfinite_steps, not as a NaN mean that would hide the interval's other steps."""
  fetched = jax.device_get([metrics for metrics, _ in pending])
  means = {k: _finite_mean([m[k] for m in fetched]) for k in fetched[0]}
  means['nonfinite_steps'] = float(fetched[-1]['nonfinite_steps'])
  return means, float(np.mean([length for _, length in pending]))


def _finite_mean(values) -> float:
  finite = [float(v) for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float('nan')  # NaN: written as null


def _stop_if_nonfinite(pending: list, step: int, baseline: int, last_checkpoint: int) -> None:
  """train.on_nonfinite=stop: RunStopped naming the first non-finite step of `pending` (the steps
  up to `step`), if any. One scalar fetched, at a log, eval or checkpoint step only."""
  if not pending or int(jax.device_get(pending[-1][0]['nonfinite_steps'])) == baseline:
    return
  fetched = jax.device_get([metrics for metrics, _ in pending])
  first = next(i for i, m in enumerate(fetched) if m['nonfinite_steps'] > baseline)
  bad_step = step - len(pending) + 1 + first
  logging.error('Non-finite loss or gradient at step %d: %s', bad_step,
                writers.format_metrics(fetched[first]))
  kept = f'the newest checkpoint, step {last_checkpoint}, is from before it' if last_checkpoint else \
      'no checkpoint was written'
  raise RunStopped(f'the loss or gradient at step {bad_step} is not finite (train.on_nonfinite=stop); '
                   f'{kept}. Lower optim.lr, add optim.clip_norm, or use --config.train.on_nonfinite=skip',
                   EXIT_NONFINITE)


def _write_run_files(s: Setup, config, workdir: str) -> None:
  """The resolved config, and the tokenizer the run reads text with (kept from its first start)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    checkpoint.write_config(workdir, config)
    if s.dataset.tokenizer and not epath.Path(tokenizer_path(workdir)).exists():
      data.tokenizers.save(s.dataset.tokenizer, tokenizer_path(workdir))
    distill.record(s.teacher, workdir)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the newest checkpoint in workdir), then evaluates on test.

  Raises RunStopped on SIGTERM (after checkpointing the current step) and, with
  train.on_nonfinite=stop, on a NaN or Inf loss or gradient.
  """
  s = setup(config, workdir, teacher=True)
  checkpoint.refuse_changed_config(workdir, config, s.abstract_state)
  s = s._replace(frozen=distill.restore(s.teacher))
  logging.info('Training on %d device(s), mesh %s, into %s', s.mesh.size, dict(s.mesh.shape), workdir)

  with sharding.active(s.mesh, s.rules):
    mngr = checkpoint.manager(workdir, config.checkpoint)
    try:
      state, step = checkpoint.restore(mngr, s.abstract_state, config.checkpoint.on_corrupt)
      if state is None:
        state = s.init()
        if config.checkpoint.init_from:
          state = state.replace(params=checkpoint.init_from(config.checkpoint.init_from, state.params))
      else:
        logging.info('Resumed from step %d in %s.', step, workdir)
      _write_run_files(s, config, workdir)  # only now: a restore that fails leaves the workdir as it was
      writer = writers.MetricWriter(workdir, resume_step=step, class_names=s.dataset.class_names)
      evaluate_split = evaluate.make_evaluate(s, config)
      # The data resumes from the step: batch i is a function of i alone, on any number of hosts.
      train_iter = pipeline.train_iterator(
          s.dataset.splits['train'], s.dataset.preprocess, s.batch_size, config.seed,
          sharding.host_batch_rows(s.mesh, s.batch_size), bucket=config.data.get('bucket', 0), start=step,
          augment=s.dataset.augment, workers=config.data.workers, prefetch=config.data.prefetch)
      state, eval_metrics = _train_loop(s, config, state, step, train_iter=train_iter, mngr=mngr,
                                        writer=writer, evaluate=evaluate_split)
    finally:  # also when stopped: a checkpoint being written completes
      mngr.wait_until_finished()
      mngr.close()
    test_metrics = evaluate_split(state, 'test')
    writer.write(config.train.steps, 'test', test_metrics)
    logging.info('test at step %d: %s', config.train.steps, writers.format_metrics(test_metrics))
    evaluate.log_per_class('eval', eval_metrics, s.dataset.class_names)
    evaluate.log_per_class('test', test_metrics, s.dataset.class_names)
    writer.close()
  return test_metrics


def _train_loop(s: Setup, config, state: TrainState, step: int, *, train_iter, mngr, writer, evaluate):
  """Steps from `step` to train.steps with logs, evals and checkpoints; returns (state, last eval)."""
  # Compiled ahead for the full batch shape (FLOPs for MFU); calls of the same shape reuse
  # that executable, and bucketed batches of other lengths compile once each.
  train_step, compiled = compile_train_step(s, config)
  rates = _throughput(s, config, compiled)
  progress = writers.Progress(config.train.steps, step)
  total, tc = config.train.steps, config.train
  stop_on_nonfinite = tc.on_nonfinite == 'stop'
  last_checkpoint, nonfinite_before = step, int(state.nonfinite_steps)
  eval_metrics = {}
  full = _example_batch(s.dataset)['inputs']
  # (metrics on device, batch length / full length) of each step, fetched once per log interval
  # (no per-step host sync). Bucketing cuts batches short: MFU counts the FLOPs actually run.
  pending = []
  with preemption.Watcher() as watcher:  # SIGTERM from here on: checkpoint this step, then stop
    while step < total:
      batch = next(train_iter)
      length = batch['inputs'].shape[1] / full.shape[1] if full.ndim > 1 else 1.0
      state, metrics = train_step(state, sharding.shard_batch(batch, s.mesh))
      step += 1
      if pending:
        # At most two steps in flight: enough to keep a device busy, and it bounds the
        # dispatch queue (multi-process CPU collectives deadlock when many steps queue up).
        jax.block_until_ready(pending[-1][0])
      pending.append((metrics, length))
      preempted = watcher.requested(step)  # once per step: on several hosts it is a collective
      logging_now = step % tc.log_every == 0 or step == total
      evaluating = (tc.eval_every and step % tc.eval_every == 0) or step == total
      saving = step % config.checkpoint.every == 0 or step == total or preempted
      if stop_on_nonfinite and (logging_now or evaluating or saving):
        _stop_if_nonfinite(pending, step, nonfinite_before, last_checkpoint)
      if logging_now:
        means, length = _interval_means(pending)
        pending = []
        means.update(rates(progress.tick(step), length))
        writer.write(step, 'train', means)
        progress.show(step, means)
      if evaluating:
        eval_metrics = evaluate(state, 'eval')
        writer.write(step, 'eval', eval_metrics)
        logging.info('eval at step %d: %s', step, writers.format_metrics(eval_metrics))
      if saving:
        checkpoint.save(mngr, step, state, config)
        last_checkpoint = step
      if preempted and step < total:
        writer.close()
        raise RunStopped(f'preempted ({watcher.signal_name}) at step {step}: checkpoint {step} is written; '
                         'run the same command to resume', preemption.EXIT_PREEMPTED)
  progress.close()
  return state, eval_metrics


def restore_newest(s: Setup, config, workdir: str):
  """(state, step) of the newest complete checkpoint in workdir, read only: a read-only mode
  never renames or deletes a checkpoint (the run that owns it may still be training).
  ConfigError if there is none; RunStopped if the newest one does not read back."""
  ckpt_dir = epath.Path(workdir) / 'checkpoints'
  if not ckpt_dir.is_dir():
    raise ConfigError(f'no checkpoints in {ckpt_dir}: train first, or pass the --workdir of a run')
  mngr = checkpoint.manager(workdir, config.checkpoint, read_only=True)
  try:
    state, step = checkpoint.restore(mngr, s.abstract_state, read_only=True)
  finally:
    mngr.close()
  if state is None:
    raise ConfigError(f'no complete checkpoint in {ckpt_dir}: train first')
  return state, step


def evaluate_checkpoint(config, workdir: str) -> dict:
  """Restores the newest checkpoint in workdir and evaluates it on eval and test."""
  s = setup(config, workdir)
  with sharding.active(s.mesh, s.rules):
    state, step = restore_newest(s, config, workdir)
    evaluate_split = evaluate.make_evaluate(s, config)
    results = {}
    for split in ('eval', 'test'):
      results[split] = evaluate_split(state, split)
      scalars = {k: v for k, v in results[split].items() if np.ndim(v) == 0}
      print(json.dumps({'step': step, 'split': split, **scalars}), flush=True)
      evaluate.log_per_class(split, results[split], s.dataset.class_names)
  return results
