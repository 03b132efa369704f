"""Bad input: one clear line on stderr, exit status 2, nothing written."""

import os

import ml_collections
import pytest

from bigjax import config as config_lib
from helpers import REPO, load_script, run_main


@pytest.mark.parametrize('args, expected', [
    (['--config.optim.name=nonsense'], "config.optim.name='nonsense' is invalid: choose one of adam"),
    (['--config.train.steps=-1'], 'config.train.steps=-1 is invalid'),
    (['--config.no_such_field=1'], 'unknown field --config.no_such_field'),
    (['--config.train.steps=abc'], '--config.train.steps=abc'),
    (['--config.data.name=imagenet9'], "config.data.name='imagenet9' is invalid"),
    (['--config.mesh.data=3'], 'needs 3 devices'),
    (['--config.data.name=mnist', '--config.data.data_dir={data_dir}'], 'tfds build mnist'),
    (['--config=experiments/lm_gpt.py:tiny', '--config.data.tokenizer=words'],
     "config.data.tokenizer='words' is invalid: choose one of byte, sentencepiece"),
    (['--config=experiments/lm_gpt.py:tiny', '--config.data.seq_len=0'], 'config.data.seq_len=0 is invalid'),
    (['--config=experiments/imdb_transformer.py:offline', '--config.model.max_length=100'],
     'config.model.max_length=100 is invalid: learned positions need one per token'),
    (['--config=experiments/imdb_lstm.py:offline', '--config.model.vocab_size=5', '--config.data.seq_len=32',
      '--config.data.data_dir={data_dir}'], 'config.model.vocab_size=5 is invalid: leave it 0'),
    (['--config.train.cpu_matmul=mkl'], "config.train.cpu_matmul='mkl' is invalid: choose one of onednn"),
], ids=['optimizer', 'steps', 'unknown_field', 'wrong_type', 'dataset', 'mesh', 'unprepared', 'tokenizer',
        'seq_len', 'max_length', 'vocab_size', 'cpu_matmul'])
def test_bad_override_exits_2_and_writes_nothing(args, expected, tmp_path, data_dir):
  workdir = tmp_path / 'run'
  config = [a for a in args if a.startswith('--config=')] or ['--config=experiments/digits_mlp.py']
  result = run_main(*config, f'--workdir={workdir}',
                    *[a.format(data_dir=data_dir) for a in args if not a.startswith('--config=')])
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('bigjax: error:')]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert not workdir.exists()


def test_missing_config_file(tmp_path):
  result = run_main('--config=experiments/missing.py', f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2
  assert result.stderr.strip() == (
      'bigjax: error: config file experiments/missing.py does not exist '
      f'(paths are relative to {REPO})')
  assert not (tmp_path / 'run').exists()


def _config(**overrides):
  c = config_lib.base_config()
  c.model.width = 8
  for path, value in overrides.items():
    section, key = path.split('__')
    c[section][key] = value
  return c


@pytest.mark.parametrize('field, value', [
    ('train__batch_size', 0), ('train__log_every', 0), ('train__eval_every', -1),
    ('checkpoint__every', 0), ('checkpoint__keep', 0), ('optim__lr', 0.0),
    ('optim__schedule', 'exp'), ('task__loss', 'hinge'), ('task__label_smoothing', 1.0),
    ('model__name', 'vgg'), ('mesh__fsdp', 0), ('model__dropout', 1.5), ('optim__warmup_steps', -5),
])
def test_validate_names_the_field(field, value):
  with pytest.raises(config_lib.ConfigError, match=field.replace('__', '.')):
    config_lib.validate(_config(**{field: value}))


def test_validate_accepts_every_experiment():
  root = os.path.join(REPO, 'experiments')
  names = sorted(n for n in os.listdir(root) if n.endswith('.py'))
  assert {'digits_mlp.py', 'digits_cnn.py', 'mnist_cnn.py', 'cifar10_resnet.py'} <= set(names)
  for name in names:
    config_lib.validate(load_script(os.path.join(root, name)).get_config())  # raises on any bad field


@pytest.mark.parametrize('model, pooling, expected', [
    ('lstm_classifier', 'first', 'model.pooling'), ('transformer_classifier', 'last', 'no last state')])
def test_text_classifier_pooling_is_checked(model, pooling, expected):
  c = config_lib.base_config()
  c.model = ml_collections.ConfigDict({'name': model, 'pooling': pooling})
  with pytest.raises(config_lib.ConfigError, match=expected):
    config_lib.validate(c)


@pytest.mark.parametrize('field, rate', [('dropout', 1.0), ('word_dropout', 1.0), ('word_dropout', -0.1)])
def test_dropout_rates_are_checked(field, rate):
  c = config_lib.base_config()
  c.model = ml_collections.ConfigDict({'name': 'lstm_classifier', field: rate})
  with pytest.raises(config_lib.ConfigError, match=f'config.model.{field}={rate} is invalid: use a rate in'):
    config_lib.validate(c)


def test_query_blocks_must_be_positive():
  c = config_lib.base_config()
  c.model = ml_collections.ConfigDict({'name': 'transformer_lm', 'query_blocks': 0})
  with pytest.raises(config_lib.ConfigError, match='model.query_blocks'):
    config_lib.validate(c)
