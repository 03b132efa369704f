"""Tasks: what a batch means. A task is a few pure functions; the trainer calls only them, so it
never branches on the task.

  model_inputs(batch) -> keyword arguments of the model's __call__ (besides `train`): by default
    {'inputs': batch['inputs']}; an encoder-decoder takes source and decoder tokens.
  loss(outputs, batch) -> (scalar loss, {name: scalar}) for the train step;
  eval_sums(outputs, batch) -> {name: array} summed over every eval batch
    (padding rows carry mask 0 and count for nothing);
  summarize(sums) -> {name: float or array} on the host, once per split.
  units = (name, per example) that the throughput counts, e.g. ('tokens', 256).
  augment(batch, key) -> batch: a train batch's on-device augmentation (mixup, cutmix), inside the
    jitted train step with the step's 'augment' key; by default the batch unchanged.
  distill_logits(outputs, batch) -> (logits (..., classes), weights (...)): what a distilled student
    matches to its teacher, and how much each position counts (bigjax/distill.py); None: no distillation.

Tasks judged over a whole split at once (translation, summarization, speech: what they generate;
multi-label: average precision, which ranks every example) add two more:
  generate(model, variables, batch) -> per-example outputs, traced inside one jitted eval step: (B, L)
    int32 ids of generated text, (speech) per-frame ids or log-probabilities and frame counts, or
    (multi-label) each class's probability;
  score(batches, outputs) -> ({name: float}, [{'source', 'reference', 'output'}, ...]): on the host,
    over the first task.eval_generate_examples examples of the split (0: all), corpus-level metrics
    (BLEU, ROUGE, WER, mAP) from library scorers, and a few examples for the logs.
"""

from collections.abc import Callable
from typing import NamedTuple

from bigjax.tasks import classification, ctc, lm, multilabel, seq2seq


def inputs_only(batch: dict) -> dict:
  return {'inputs': batch['inputs']}


def unchanged(batch: dict, key) -> dict:
  del key
  return batch


class Task(NamedTuple):
  loss: Callable
  eval_sums: Callable
  summarize: Callable
  units: tuple = ('examples', 1)
  model_inputs: Callable = inputs_only
  generate: Callable | None = None
  score: Callable | None = None
  augment: Callable = unchanged
  distill_logits: Callable | None = None


# name -> module with check_config(task_config) and make(task_config, dataset) -> Task's fields
# (a tuple in their order, or a dict by name)
TASKS = {
    'classification': classification,
    'multilabel': multilabel,
    'lm': lm,
    'seq2seq': seq2seq,
    'ctc': ctc,
}


def build(task_config, dataset) -> Task:
  made = TASKS[task_config.name].make(task_config, dataset)
  return Task(**made) if isinstance(made, dict) else Task(*made)
