"""Shared fixtures: a private TFDS data dir with `digits` prepared, and a runner for bigjax.main;
and the two guards that make the suite's result independent of the machine: the CPU backend,
and no network."""

import os
import shutil
import sys

# The same result on a machine with a GPU or TPU as on a laptop: every test, and every subprocess
# (which inherits this environment), runs on JAX's CPU backend. Set before anything imports jax.
os.environ['JAX_PLATFORMS'] = 'cpu'
if 'jax' in sys.modules:  # imported by a plugin first: the backend is chosen at first use, still ahead
  sys.modules['jax'].config.update('jax_platforms', 'cpu')

import network_guard  # noqa: E402
import pytest  # noqa: E402

from helpers import run_main  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def no_network(tmp_path_factory):
  """Sockets reach loopback only, in this process and in every Python subprocess the tests start
  (network_guard.py, as their sitecustomize); blocked calls raise network_guard.NetworkBlocked."""
  site = tmp_path_factory.mktemp('sitecustomize')
  shutil.copy(network_guard.__file__, site / 'sitecustomize.py')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PYTHONPATH', os.pathsep.join([str(site), *filter(None, [os.environ.get('PYTHONPATH')])]))
    network_guard.install()
    try:
      yield
    finally:
      network_guard.uninstall()


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
