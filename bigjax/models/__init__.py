"""Model registry: `model.name` -> a flax.linen Module class.

Every field of `config.model` except `name` is passed to the constructor, so a
config can set any of the module's attributes and nothing else.
"""

import dataclasses

import flax.linen as nn

from bigjax.config import check, check_choice
from bigjax.models.cnn import LeNet, ResNet
from bigjax.models.layers import ACTIVATIONS
from bigjax.models.mlp import MLP

MODELS = {
    'mlp': MLP,
    'lenet': LeNet,
    'resnet': ResNet,
}


def _kwargs(model_config) -> dict:
  return {k: v for k, v in model_config.items() if k != 'name'}


def check_config(model_config) -> None:
  cls = MODELS[model_config.name]
  fields = {f.name for f in dataclasses.fields(cls)} - {'num_classes', 'parent', 'name'}
  for key, value in _kwargs(model_config).items():
    check(key in fields, f'model.{key}', value,
          f'{model_config.name} takes {", ".join(sorted(fields))}')
  if 'activation' in model_config:
    check_choice(model_config, 'model', 'activation', ACTIVATIONS)
  if 'dropout' in model_config:
    check(0 <= model_config.dropout < 1, 'model.dropout', model_config.dropout, 'use a rate in [0, 1)')


def build(model_config, num_classes: int) -> nn.Module:
  return MODELS[model_config.name](num_classes=num_classes, **_kwargs(model_config))
