"""Model registry: `model.name` -> a flax.linen Module class.

Every field of `config.model` except `name` is passed to the constructor, so a
config can set any of the module's attributes and nothing else. `num_outputs`
comes from the dataset: classes, or the vocabulary of a language model.
"""

import dataclasses

import flax.linen as nn

from bigjax import flops, sharding
from bigjax.config import check, check_choice
from bigjax.models.attention import IMPLEMENTATIONS
from bigjax.models.cnn import BLOCKS, STEMS, LeNet, ResNet
from bigjax.models.conformer import ENCODERS, NORMALIZATIONS, ConformerCTC
from bigjax.models.layers import ACTIVATIONS, POOLINGS
from bigjax.models.lstm import LSTMClassifier
from bigjax.models.mlp import MLP
from bigjax.models.seq2seq import TransformerSeq2Seq
from bigjax.models.transformer import (
  MLPS,
  NORMS,
  POSITIONS,
  REMAT_POLICIES,
  TransformerClassifier,
  TransformerLM,
)
from bigjax.models.vit import CLASSIFIERS as VIT_CLASSIFIERS
from bigjax.models.vit import POSITIONS as VIT_POSITIONS
from bigjax.models.vit import ViT

MODELS = {
    'mlp': MLP,
    'lenet': LeNet,
    'resnet': ResNet,
    'transformer_lm': TransformerLM,
    'lstm_classifier': LSTMClassifier,
    'transformer_classifier': TransformerClassifier,
    'transformer_seq2seq': TransformerSeq2Seq,
    'vit': ViT,
    'conformer_ctc': ConformerCTC,
}
DTYPES = ('auto', 'float32', 'bfloat16')  # auto: bfloat16 on TPU and GPU, float32 on CPU


def _kwargs(model_config) -> dict:
  return {k: v for k, v in model_config.items() if k != 'name'}


def defaults(name: str) -> dict:
  """The model's constructor defaults: what a config that leaves a field out gets."""
  return {f.name: f.default for f in dataclasses.fields(MODELS[name]) if f.default is not dataclasses.MISSING}


def _with_defaults(model_config) -> dict:
  """The model's constructor arguments: the config's fields over the class defaults."""
  return {**defaults(model_config.name), **_kwargs(model_config)}


def check_config(model_config) -> None:
  cls = MODELS[model_config.name]
  fields = {f.name for f in dataclasses.fields(cls)} - {'num_outputs', 'parent', 'name'}
  for key, value in _kwargs(model_config).items():
    check(key in fields, f'model.{key}', value,
          f'{model_config.name} takes {", ".join(sorted(fields))}')
  if 'activation' in model_config:
    check_choice(model_config, 'model', 'activation', ACTIVATIONS)
  positions = VIT_POSITIONS if model_config.name == 'vit' else POSITIONS
  for field, allowed in (('mlp', MLPS), ('norm', NORMS), ('positions', positions),
                         ('remat', REMAT_POLICIES), ('dtype', DTYPES), ('pooling', POOLINGS)):
    if field in model_config:
      check_choice(model_config, 'model', field, allowed)
  # Checks of fields that depend on each other read the class defaults for fields left out:
  # each field has one default, the model class's.
  merged = _with_defaults(model_config)
  if 'num_heads' in merged:
    heads = merged['num_heads']
    kv = merged.get('num_kv_heads') or heads  # 0 (or a model without the field): one per head
    check(merged['d_model'] % heads == 0, 'model.d_model', merged['d_model'],
          f'use a multiple of model.num_heads={heads}')
    check(heads % kv == 0, 'model.num_kv_heads', kv, f'use a divisor of model.num_heads={heads}')
  if 'attention' in model_config:
    check_choice(model_config, 'model', 'attention', IMPLEMENTATIONS)
  if 'attention_block' in model_config:
    check(model_config.attention_block >= 128 and model_config.attention_block % 128 == 0,
          'model.attention_block', model_config.attention_block, 'use a multiple of 128')
  if 'query_blocks' in model_config:
    check(model_config.query_blocks >= 1, 'model.query_blocks', model_config.query_blocks,
          'use 1 (one attention call) or more query chunks')
  _check_vision(model_config, merged)
  _check_speech(model_config, merged)
  if model_config.name == 'transformer_classifier':
    check(merged['pooling'] != 'last', 'model.pooling', 'last',
          'an encoder has no last state: use mean or max')
  for field in ('dropout', 'word_dropout'):
    if field in model_config:
      check(0 <= model_config[field] < 1, f'model.{field}', model_config[field], 'use a rate in [0, 1)')


def _check_vision(model_config, merged: dict) -> None:
  """The ViT's and the ResNet's own choices."""
  if model_config.name == 'vit':
    if 'classifier' in model_config:
      check_choice(model_config, 'model', 'classifier', VIT_CLASSIFIERS)
    check(merged['patch_size'] >= 1, 'model.patch_size', merged['patch_size'],
          'use a divisor of the image size')
    check(merged['positions'] != 'sincos2d' or merged['d_model'] % 4 == 0, 'model.d_model',
          merged['d_model'], 'sincos2d positions need a multiple of 4')
  if model_config.name == 'resnet':
    for field, allowed in (('stem', STEMS), ('block', BLOCKS)):
      if field in model_config:
        check_choice(model_config, 'model', field, allowed)


def _check_speech(model_config, merged: dict) -> None:
  """The Conformer-CTC's own choices."""
  if model_config.name != 'conformer_ctc':
    return
  for field, allowed in (('normalize', NORMALIZATIONS), ('encoder', ENCODERS)):
    if field in model_config:
      check_choice(model_config, 'model', field, allowed)
  for field in ('n_mels', 'conv_kernel', 'num_layers', 'lstm_layers', 'lstm_hidden'):
    check(merged[field] >= 1, f'model.{field}', merged[field], 'use a positive integer')
  for field in ('subsample_channels', 'freq_masks', 'freq_width', 'time_masks'):
    check(merged[field] >= 0, f'model.{field}', merged[field], 'use 0 or more')
  check(0 <= merged['time_width'] < 1, 'model.time_width', merged['time_width'],
        "use a fraction in [0, 1) of an utterance's frames")


# Model FLOPs per example for utilization figures; models not here use XLA's count.
# Each takes (model_config, num_params, input_shape, target_shape); target_shape: pairs only.
FLOPS_PER_EXAMPLE = {
    'transformer_lm': lambda model_config, num_params, inputs, targets: flops.transformer_flops_per_token(
        _with_defaults(model_config), num_params, inputs[0]) * inputs[0],
    'lstm_classifier': lambda model_config, num_params, inputs, targets: flops.lstm_flops_per_token(
        _with_defaults(model_config)) * inputs[0],
    'transformer_seq2seq': lambda model_config, num_params, inputs, targets: flops.seq2seq_flops_per_example(
        _with_defaults(model_config), num_params, inputs[0], targets[0]),
    'vit': lambda model_config, num_params, inputs, targets: flops.vit_flops_per_example(
        _with_defaults(model_config), num_params, inputs),
}


def flops_per_example(model_config, num_params: int, input_shape, target_shape=None) -> float | None:
  """target_shape: a pair model's target tokens (the others read only the inputs)."""
  fn = FLOPS_PER_EXAMPLE.get(model_config.name)
  return fn(model_config, num_params, input_shape, target_shape) if fn else None


def build(model_config, num_outputs: int, vocab_size: int = 0) -> nn.Module:
  """The configured model; a text model's vocab_size (0 in the config) is the tokenizer's."""
  kwargs = _kwargs(model_config)
  cls = MODELS[model_config.name]
  if 'vocab_size' in {f.name for f in dataclasses.fields(cls)}:
    configured = kwargs.get('vocab_size', 0)
    check(configured in (0, vocab_size) and (configured or vocab_size), 'model.vocab_size', configured,
          f'leave it 0 (the tokenizer has {vocab_size} ids)' if vocab_size else
          'this dataset has no tokenizer: set the number of token ids')
    kwargs['vocab_size'] = configured or vocab_size
  if kwargs.get('dtype') == 'auto':
    kwargs['dtype'] = 'float32' if sharding.platform() == 'cpu' else 'bfloat16'
  return cls(num_outputs=num_outputs, **kwargs)
