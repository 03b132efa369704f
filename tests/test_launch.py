"""launch/: the commands tpu_vm.sh would run (--print), what slurm_gpu.sbatch runs, usage errors."""

import os
import shlex
import subprocess

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
  result = _tpu_vm(tmp_path, '--print', *TPU, '--', *BIGJAX_ARGS)
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'calls').exists()  # not one gcloud call
  create, archive, copy, install, job = _printed_commands(result.stdout)
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create'] and 'my-tpu' in create
  assert {'--accelerator-type=v4-32', '--zone=us-central2-b'} <= set(create)
  assert archive[0] == 'tar' and copy[4] == 'scp'
  for command in (copy, install, job):
    assert '--worker=all' in command
  install_script = next(a for a in install if a.startswith('--command='))
  assert 'pip install -q -r requirements.txt' in install_script and "'jax[tpu]==0.10.2'" in install_script
  job_script = next(a for a in job if a.startswith('--command=')).removeprefix('--command=')
  # What each worker's shell runs is exactly bigjax.main with our arguments, quotes and all.
  assert shlex.split(job_script) == ['cd', '~/bigjax', '&&', 'python', '-m', 'bigjax.main', '--distributed',
                                     *BIGJAX_ARGS]
  assert 'keeping my-tpu' in result.stdout


def test_tpu_vm_queued_resource_and_delete(tmp_path):
  result = _tpu_vm(tmp_path, '--print', *TPU, '--queued', '--spot', '--delete', '--project=lab', '--',
                   *BIGJAX_ARGS)
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
