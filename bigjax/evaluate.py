"""Evaluation: every example of a split through the task's eval_sums, and, for a task that
generates (translation, summarization, speech), its decoding and its host-side scorer.

The trainer and --mode=eval both call `make_evaluate`; neither asks which task it runs.
"""

import time

import jax
import jax.numpy as jnp
from absl import logging

from bigjax import sharding, writers
from bigjax.data import pipeline

PROGRESS_SECONDS = 30


def variables(state) -> dict:
  return {'params': state.params, **state.model_state}


def make_evaluate(s, config):
  """Returns evaluate(state, split) -> metrics over every example of the split.

  A generating task also decodes: the first task.eval_generate_examples examples of the eval
  split (0: all), every example of the test split; its scorer adds corpus metrics and
  'examples' (a few source / reference / output triples, also logged).
  """
  batch_sharding, replicated = sharding.batch_sharding(s.mesh), sharding.replicated(s.mesh)

  def eval_step(state, batch):
    outputs = s.model.apply(variables(state), **s.task.model_inputs(batch), train=False)
    return s.task.eval_sums(outputs, batch)

  eval_step = jax.jit(eval_step, in_shardings=(s.state_shardings, batch_sharding), out_shardings=replicated)
  bucket = config.data.get('bucket', 0)
  rows = sharding.host_batch_rows(s.mesh, s.batch_size)

  def batches(split):
    for batch in pipeline.eval_batches(split, s.dataset.preprocess, s.batch_size, rows, bucket=bucket):
      yield sharding.shard_batch(batch, s.mesh)

  def summed(state, split) -> dict:
    sums = None
    for batch in batches(split):
      batch_sums = eval_step(state, batch)
      if sums is not None:
        # At most two batches in flight, as in the train loop: multi-process CPU collectives
        # can deadlock when many steps queue up.
        jax.block_until_ready(sums)
      sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
    return s.task.summarize(jax.device_get(sums))

  if s.task.generate is None:
    return lambda state, split: summed(state, s.dataset.splits[split])

  # Outputs and the batch come back whole on every host (replicated), for the host-side scorer.
  generate_step = jax.jit(lambda state, batch: (s.task.generate(s.model, variables(state), batch), batch),
                          in_shardings=(s.state_shardings, batch_sharding), out_shardings=replicated)

  def evaluate(state, split: str) -> dict:
    metrics = summed(state, s.dataset.splits[split])
    limit = 0 if split == 'test' else config.task.get('eval_generate_examples', 0)
    chosen = s.dataset.splits[split].take(limit)
    fetched, done, last_log = [], 0, time.monotonic()
    for batch in batches(chosen):
      fetched.append(jax.device_get(generate_step(state, batch)))
      done += int(fetched[-1][1]['mask'].sum())
      if time.monotonic() - last_log > PROGRESS_SECONDS:  # decoding a test split takes minutes
        logging.info('generating on %s: %d/%d examples', split, done, len(chosen))
        last_log = time.monotonic()
    scores, examples = s.task.score([batch for _, batch in fetched], [ids for ids, _ in fetched])
    for example in examples:
      logging.info('%s example:\n%s', split, '\n'.join(f'  {k}: {v}' for k, v in example.items()))
    return {**metrics, **scores, 'examples': examples}
  return evaluate


def log_per_class(split: str, metrics: dict, class_names) -> None:
  if 'confusion_matrix' in metrics:  # tasks with classes report one; the LM does not
    logging.info('%s per class:\n%s\n%s confusion matrix:\n%s', split,
                 writers.per_class_table(metrics, class_names), split,
                 writers.confusion_table(metrics['confusion_matrix'], class_names))
