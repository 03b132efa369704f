"""Scale-out: one run, the same numbers on 1 device, on 8 simulated devices in every mesh
shape, in 2 processes; shard_map against GSPMD; --dry_run's memory report; multi-host failure."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, read_metrics, run_main

EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
ONE_DEVICE = {'XLA_FLAGS': ''}
STEPS = 100  # digits_mlp's own config, shortened: it learns (test loss < 0.2), the same in every layout
MESHES = {  # data=8 is the 2-process run's mesh (data=-1 over 2 x 4 devices)
    'fsdp=8': ['--config.mesh.data=1', '--config.mesh.fsdp=8'],
    'data=2,fsdp=2,tensor=2': ['--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2'],
}


def _digits_args(workdir, data_dir):
  return ['--config=experiments/digits_mlp.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.train.steps={STEPS}']


def local_multihost(n, *args, **popen_kwargs):
  env = {**os.environ, 'PYTHON': sys.executable, 'LOCAL_DEVICES': '4'}
  return subprocess.Popen(['bash', 'launch/local_multihost.sh', str(n), *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)


def _test_loss(workdir):
  return read_metrics(workdir, 'test')[-1]['loss']


@pytest.fixture(scope='module')
def test_losses(data_dir, tmp_path_factory):
  """digits_mlp's final test loss per layout, each a separate run of bigjax.main."""
  root = tmp_path_factory.mktemp('layouts')
  losses = {}
  result = run_main(*_digits_args(root / '1', data_dir), env=ONE_DEVICE)
  assert result.returncode == 0, result.stderr[-3000:]
  losses['1 device'] = _test_loss(root / '1')
  for name, flags in MESHES.items():
    result = run_main(*_digits_args(root / name, data_dir), *flags, env=EIGHT_DEVICES)
    assert result.returncode == 0, result.stderr[-3000:]
    losses[name] = _test_loss(root / name)
  proc = local_multihost(2, *_digits_args(root / 'hosts', data_dir))
  output, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, output[-3000:]
  losses['2 processes x 4 devices'] = _test_loss(root / 'hosts')
  return losses


def test_final_test_loss_is_the_same_in_every_layout(test_losses):
  reference = test_losses['1 device']
  assert reference < 0.2  # it learned
  for name, loss in test_losses.items():
    assert abs(loss - reference) <= 1e-5, (name, loss, reference)


SHARD_MAP_VS_AUTO = '''
import json, sys
import jax, numpy as np
from bigjax import sharding, train
from bigjax.config import base_config
from bigjax.data import pipeline

def run(mode, data, fsdp):
  c = base_config()
  c.data.data_dir = sys.argv[1]
  c.model.dropout = 0.0  # shard_map draws dropout per device; GSPMD draws one global mask
  c.train.steps, c.train.batch_size = 40, 64
  c.mesh.data, c.mesh.fsdp, c.parallel.mode = data, fsdp, mode
  s = train.setup(c)
  with sharding.active(s.mesh, s.rules):
    step, state = train.make_train_step(s, c), s.init()
    batches = pipeline.train_iterator(s.dataset.splits['train'], s.dataset.preprocess, 64, c.seed)
    losses = []
    for _ in range(c.train.steps):
      state, metrics = step(state, sharding.shard_batch(next(batches), s.mesh))
      losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params)

report = {}
for data, fsdp in [(8, 1), (2, 4)]:
  (auto_losses, auto_params), (sm_losses, sm_params) = run('auto', data, fsdp), run('shard_map', data, fsdp)
  report[f'{data}x{fsdp}'] = {
      'loss_diff': max(abs(a - b) for a, b in zip(auto_losses, sm_losses)),
      'param_diff': max(float(np.max(np.abs(a - b))) for a, b in
                        zip(jax.tree.leaves(auto_params), jax.tree.leaves(sm_params))),
      'loss_drop': auto_losses[0] - auto_losses[-1]}
print(json.dumps(report))
'''


def test_shard_map_and_gspmd_give_the_same_losses_and_params(data_dir):
  result = subprocess.run([sys.executable, '-c', SHARD_MAP_VS_AUTO, data_dir], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **EIGHT_DEVICES})
  assert result.returncode == 0, result.stderr[-3000:]
  for mesh, r in json.loads(result.stdout.splitlines()[-1]).items():
    assert r['loss_drop'] > 1.0, mesh  # both trained
    assert r['loss_diff'] <= 1e-5 and r['param_diff'] <= 1e-5, (mesh, r)


def _dry_run(data_dir, *flags, devices=8):
  env = {'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  result = run_main('--config=experiments/digits_mlp.py', f'--config.data.data_dir={data_dir}',
                    '--dry_run', *flags, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 1  # exactly one line, JSON
  return json.loads(lines[0])


def _state_bytes(report):
  return report['per_device_bytes']['params'] + report['per_device_bytes']['opt_state']


def test_dry_run_reports_fsdp_memory_for_the_mlp(data_dir, tmp_path):
  replicated = _dry_run(data_dir, '--config.mesh.data=8', f'--workdir={tmp_path}/w')
  sharded = _dry_run(data_dir, '--config.mesh.data=1', '--config.mesh.fsdp=8', f'--workdir={tmp_path}/w')
  assert replicated['devices'] == 8 and sharded['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  # digits_mlp: 64 -> 256 -> 256 -> 10 with biases.
  assert replicated['params'] == sharded['params'] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
  # Adam keeps two moments: params x 3 in float32 (plus step counters), whole on each device.
  assert 0 <= _state_bytes(replicated) - 3 * 4 * replicated['params'] <= 64
  assert _state_bytes(sharded) <= _state_bytes(replicated) / 7
  for report in (replicated, sharded):
    assert report['flops_per_step'] > 6 * report['params'] * 128  # fwd + bwd over a batch of 128
    assert 0 < report['per_device_bytes']['temp'] and report['per_device_bytes']['total'] > 0
  assert not os.path.exists(f'{tmp_path}/w')  # a dry run writes nothing


def test_dry_run_works_for_any_device_count(data_dir):
  report = _dry_run(data_dir, '--config.mesh.data=-1', '--config.mesh.tensor=3', devices=12)
  assert report['devices'] == 12 and report['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 3}


DRY_RUN_RESNET = '''
import json
import tensorflow_datasets as tfds
from bigjax import dry_run
from experiments import cifar10_resnet

reports = {}
with tfds.testing.mock_data(num_examples=8):  # cifar10 is not on this machine; shapes are
  for name, data, fsdp in [('replicated', 8, 1), ('fsdp', 1, 8)]:
    c = cifar10_resnet.get_config()
    c.mesh.data, c.mesh.fsdp = data, fsdp
    reports[name] = dry_run.report(c)
print(json.dumps(reports))
'''


@pytest.mark.slow  # 21 s; CI keeps the MLP's fsdp memory test
def test_dry_run_reports_fsdp_memory_for_the_largest_model():
  result = subprocess.run([sys.executable, '-c', DRY_RUN_RESNET], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu', **EIGHT_DEVICES})
  assert result.returncode == 0, result.stderr[-3000:]
  reports = json.loads(result.stdout.splitlines()[-1])
  replicated, sharded = reports['replicated'], reports['fsdp']
  assert replicated['params'] == sharded['params'] > 250_000  # the largest model in the repo, a ResNet
  assert _state_bytes(sharded) <= _state_bytes(replicated) / 7


def test_killing_one_process_stops_the_run_and_it_resumes_exactly(data_dir, tmp_path, test_losses):
  workdir = tmp_path / 'killed'
  args = [*_digits_args(workdir, data_dir), '--config.checkpoint.every=50']
  proc = local_multihost(2, *args, start_new_session=True)
  try:
    deadline = time.time() + 300
    while not (workdir / 'checkpoints' / '50').exists():  # mid-run, after the first save
      assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
      time.sleep(0.1)
    victim = int(subprocess.check_output(['pgrep', '-P', str(proc.pid)], text=True).split()[-1])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.time() - killed_at < 60
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert read_metrics(workdir, 'test') == []  # it did not finish

  rerun = local_multihost(2, *args)
  output, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, output[-3000:]
  assert _test_loss(workdir) == test_losses['2 processes x 4 devices']  # resumed to the last digit


@pytest.mark.slow  # about a minute: the survivor waits out the heartbeat timeout
@pytest.mark.parametrize('victim', [0, 1])
def test_without_the_launcher_a_dead_process_stops_the_others_within_60_s(data_dir, tmp_path, victim):
  """Processes started by hand (as on real hosts): JAX's heartbeat (--heartbeat_timeout_s=30)
  tells the survivor its peer is gone; killing the coordinator's process ends the other at once."""
  port = subprocess.check_output([sys.executable, '-c', 'import socket; s = socket.socket(); '
                                  's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'], text=True).strip()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4')
  args = [*_digits_args(tmp_path, data_dir), '--config.train.steps=3000', '--config.checkpoint.every=50',
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  procs = [subprocess.Popen([sys.executable, '-m', 'bigjax.main', *args, f'--process_id={i}'], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (0, 1)]
  try:
    deadline = time.time() + 300
    while not (tmp_path / 'checkpoints' / '50').exists():
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.1)
    procs[victim].kill()
    killed_at = time.time()
    survivor = procs[1 - victim]
    survivor.wait(timeout=60)
    assert survivor.returncode != 0 and time.time() - killed_at < 60
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.mark.slow  # about a minute: a 2-process run, preempted, then resumed
def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(data_dir, tmp_path):
  """JAX's preemption sync point: the process that got SIGTERM and its peer stop at the same
  step, both exit 143 after checkpointing it, and the rerun resumes to the unbroken run's loss."""
  port = subprocess.check_output([sys.executable, '-c', 'import socket; s = socket.socket(); '
                                  's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'], text=True).strip()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4')
  args = [*_digits_args(tmp_path / 'run', data_dir), '--config.train.steps=300',
          '--config.checkpoint.every=50', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  procs = [subprocess.Popen([sys.executable, '-m', 'bigjax.main', *args, f'--process_id={i}'], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in (0, 1)]
  try:
    deadline = time.time() + 300
    while not (tmp_path / 'run' / 'checkpoints' / '50').exists():
      assert all(p.poll() is None for p in procs) and time.time() < deadline
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [143, 143], [o[-2000:] for o in outputs]
  lines = [next(x for x in o.splitlines() if x.startswith('bigjax: stopped: preempted')) for o in outputs]
  assert lines[0] == lines[1]  # the same step on both
  step = int(lines[0].split('at step ')[1].split(':')[0])
  assert 50 < step < 300 and str(step) in os.listdir(tmp_path / 'run' / 'checkpoints')
  losses = []
  for workdir in ('run', 'unbroken'):
    proc = local_multihost(2, *_digits_args(tmp_path / workdir, data_dir), '--config.train.steps=300')
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    losses.append(_test_loss(tmp_path / workdir))
  assert losses[0] == losses[1]
