"""Shared fixtures: a private TFDS data dir with `digits` prepared, and a runner for bigjax.main."""

import pytest

from helpers import run_main


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A fresh data dir: the first load prepares digits there, as on a new machine."""
  from bigjax import data
  from bigjax.config import base_config
  path = str(tmp_path_factory.mktemp('tfds'))
  config = base_config()
  config.data.data_dir = path
  data.load(config.data)
  return path


@pytest.fixture(scope='session')
def main_job(data_dir, tmp_path_factory):
  """The README's main command, run once: digits_mlp with its own config, end to end."""
  workdir = str(tmp_path_factory.mktemp('runs') / 'digits')
  result = run_main('--config=experiments/digits_mlp.py', f'--workdir={workdir}',
                    f'--config.data.data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir
