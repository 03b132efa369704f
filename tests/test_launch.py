"""launch/: the commands tpu_vm.sh would run (--print), what slurm_gpu.sbatch runs, usage errors."""

import os
import shlex
import subprocess

import pytest

from helpers import REPO

TPU = ['--name=my-tpu', '--zone=us-central2-b', '--accelerator=v4-32']
BIGJAX_ARGS = ['--config=experiments/digits_mlp.py', "--workdir=/mnt/shared/it's here",
               '--config.train.steps=10']


def _fake_path(tmp_path, *tools):
  """A PATH where each tool records its arguments to tmp_path/calls instead of running."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  for tool in tools:
    (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n')
    (bin_dir / tool).chmod(0o755)
  return {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}'}


def _tpu_vm(tmp_path, *args):
  return subprocess.run(['bash', 'launch/tpu_vm.sh', *args], cwd=REPO, capture_output=True, text=True,
                        env=_fake_path(tmp_path, 'gcloud'))


def _printed_commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def test_tpu_vm_print_shows_every_step_and_runs_nothing(tmp_path):
  result = _tpu_vm(tmp_path, '--print', *TPU, '--shared_workdir', '--', *BIGJAX_ARGS)
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'calls').exists()  # not one gcloud call
  create, archive, copy, install, job = _printed_commands(result.stdout)
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create'] and 'my-tpu' in create
  assert {'--accelerator-type=v4-32', '--zone=us-central2-b'} <= set(create)
  assert archive[0] == 'tar' and copy[4] == 'scp'
  for command in (copy, install, job):
    assert '--worker=all' in command
  install_script = next(a for a in install if a.startswith('--command='))
  assert 'pip install -q -r requirements.txt -r requirements-tpu.txt' in install_script
  job_script = next(a for a in job if a.startswith('--command=')).removeprefix('--command=')
  # What each worker's shell runs is exactly bigjax.main with our arguments, quotes and all.
  assert shlex.split(job_script) == ['cd', '~/bigjax', '&&', 'python', '-m', 'bigjax.main', '--distributed',
                                     *BIGJAX_ARGS]
  assert 'keeping my-tpu' in result.stdout


def test_tpu_vm_queued_resource_and_delete(tmp_path):
  result = _tpu_vm(tmp_path, '--print', *TPU, '--queued', '--spot', '--delete', '--project=lab',
                   '--shared_workdir', '--', *BIGJAX_ARGS)
  assert result.returncode == 0, result.stderr
  commands = _printed_commands(result.stdout)
  create, delete = commands[0], commands[-1]
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'my-tpu']
  assert {'--node-id=my-tpu', '--spot', '--project=lab', '--runtime-version=tpu-ubuntu2204-base'} <= set(
      create)
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'my-tpu']


def test_tpu_vm_without_a_name_or_job_is_a_usage_error(tmp_path):
  for args in (['--print', '--zone=z', '--accelerator=v4-8', '--', '--config=x.py'], ['--print', *TPU],
               ['--print', '--bogus', *TPU, '--', '--config=x.py']):
    result = _tpu_vm(tmp_path, *args)
    assert result.returncode == 2 and 'usage' in result.stderr
  assert not (tmp_path / 'calls').exists()


def test_requirements_tpu_pins_the_jax_of_requirements_txt():
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    jax_version = next(line.split('==')[1].strip() for line in f if line.startswith('jax=='))
  with open(os.path.join(REPO, 'requirements-tpu.txt')) as f:
    assert f'jax[tpu]=={jax_version}' in f.read().split()


@pytest.mark.parametrize('accelerator', ['v4-16', 'v4-32', 'v5p-16', 'v5litepod-16', 'v6e-256'])
@pytest.mark.parametrize('workdir', [['--workdir=/mnt/runs/x'], ['--workdir', 'runs/x'], []])
def test_tpu_vm_refuses_a_multi_host_slice_whose_workdir_is_not_shared(tmp_path, accelerator, workdir):
  result = _tpu_vm(tmp_path, '--print', '--name=t', '--zone=z', f'--accelerator={accelerator}', '--',
                   '--config=experiments/digits_mlp.py', *workdir)
  assert result.returncode == 2
  [line] = result.stderr.splitlines()
  assert line.startswith('tpu_vm: error:') and 'gs://' in line and '--shared_workdir' in line
  assert not result.stdout and not (tmp_path / 'calls').exists()


@pytest.mark.parametrize('accelerator, options, workdir', [
    ('v4-32', [], '--workdir=gs://bucket/runs/x'),
    ('v5litepod-16', ['--shared_workdir'], '--workdir=/mnt/filestore/runs/x'),
    ('v4-8', [], '--workdir=runs/x'),  # one host: its own disk is shared by all its processes
    ('v5litepod-8', [], '--workdir=runs/x'),
    ('v6e-4', [], '--workdir=runs/x'),
])
def test_tpu_vm_runs_with_a_bucket_a_declared_shared_workdir_or_one_host(tmp_path, accelerator, options,
                                                                          workdir):
  result = _tpu_vm(tmp_path, '--print', '--name=t', '--zone=z', f'--accelerator={accelerator}', *options,
                   '--', '--config=experiments/digits_mlp.py', workdir)
  assert result.returncode == 0, result.stderr
  assert workdir in _printed_commands(result.stdout)[-1][-1]


def test_slurm_script_runs_bigjax_once_per_task_with_distributed_init(tmp_path):
  env = {**_fake_path(tmp_path, 'srun'), 'SLURM_SUBMIT_DIR': REPO}
  script = os.path.join(REPO, 'launch/slurm_gpu.sbatch')
  result = subprocess.run(['bash', script, *BIGJAX_ARGS[:1]], cwd=tmp_path, capture_output=True, text=True,
                          env=env)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'calls').read_text().split() == [
      'srun', '--kill-on-bad-exit=1', 'python', '-m', 'bigjax.main', '--distributed', BIGJAX_ARGS[0]]
  with open(os.path.join(REPO, 'launch/slurm_gpu.sbatch')) as f:
    assert '#SBATCH --ntasks-per-node=1' in f.read()


def test_local_multihost_usage_error():
  result = subprocess.run(['bash', 'launch/local_multihost.sh', 'two', '--config=x.py'], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 2 and 'usage' in result.stderr
