"""Tasks: what a batch means. A task turns model outputs and a batch into a loss and metrics.

The trainer calls only these three functions, so it never branches on the task:
  loss(outputs, batch) -> (scalar loss, {name: scalar}) for the train step;
  eval_sums(outputs, batch) -> {name: array} summed over every eval batch
    (padding rows carry mask 0 and count for nothing);
  summarize(sums) -> {name: float or array} on the host, once per split.
and says what its throughput counts: `units` = (name, per example), e.g.
('tokens', 256) for a language model, so the log shows tokens/s.
"""

from collections.abc import Callable
from typing import NamedTuple

from bigjax.tasks import classification, lm


class Task(NamedTuple):
  loss: Callable
  eval_sums: Callable
  summarize: Callable
  units: tuple = ('examples', 1)


# name -> module with check_config(task_config) and make(task_config, dataset) -> Task
TASKS = {
    'classification': classification,
    'lm': lm,
}


def build(task_config, dataset) -> Task:
  return Task(*TASKS[task_config.name].make(task_config, dataset))
