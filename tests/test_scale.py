"""Scale-out: one run, the same numbers on 1 device, on 8 simulated devices in every mesh
shape, in 2 processes; shard_map against GSPMD; --dry_run's memory report; multi-host failure."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import REPO, assert_resumed, read_metrics, run_main, tree_listing

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


def _free_port() -> int:
  """A loopback port nobody listens on now, for a coordinator."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _host_env() -> dict:
  """The environment of one process started by hand, as on a real host: 4 CPU devices of its own."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return {**env, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '4'}


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
  with open(root / 'hosts' / 'metrics.jsonl') as f:
    losses['2 processes: metrics.jsonl'] = f.read().splitlines()
  return losses


def test_two_processes_write_each_record_once(test_losses):
  lines = test_losses.pop('2 processes: metrics.jsonl')
  records = [json.loads(line) for line in lines]
  assert len(set(lines)) == len(lines) and [(r['step'], r['split']) for r in records] == [
      (100, 'train'), (100, 'eval'), (100, 'test')]


def test_final_test_loss_is_the_same_in_every_layout(test_losses):
  reference = test_losses['1 device']
  assert reference < 0.2  # it learned
  for name, loss in test_losses.items():
    if name.endswith('metrics.jsonl'):
      continue
    assert abs(loss - reference) <= 1e-5, (name, loss, reference)


SHARD_MAP_VS_AUTO = '''
import json, sys
import jax, numpy as np
from bigjax import sharding, train
from bigjax.config import base_config
from bigjax.data import pipeline

def run(mode):
  c = base_config()
  c.data.data_dir = sys.argv[1]
  c.model.dropout = 0.0  # shard_map draws dropout per device; GSPMD draws one global mask
  c.train.steps, c.train.batch_size = 40, 64
  c.mesh.data, c.parallel.mode = 8, mode  # shard_map is data parallel only (validate refuses fsdp)
  s = train.setup(c)
  with sharding.active(s.mesh, s.rules):
    step, state = train.make_train_step(s, c), s.init()
    batches = pipeline.train_iterator(s.dataset.splits['train'], s.dataset.preprocess, 64, c.seed)
    losses = []
    for _ in range(c.train.steps):
      state, metrics = step(state, sharding.shard_batch(next(batches), s.mesh))
      losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params)

(auto_losses, auto_params), (sm_losses, sm_params) = run('auto'), run('shard_map')
print(json.dumps({'data=8': {
    'loss_diff': max(abs(a - b) for a, b in zip(auto_losses, sm_losses)),
    'param_diff': max(float(np.max(np.abs(a - b))) for a, b in
                      zip(jax.tree.leaves(auto_params), jax.tree.leaves(sm_params))),
    'loss_drop': auto_losses[0] - auto_losses[-1]}}))
'''


def test_shard_map_and_gspmd_give_the_same_losses_and_params(data_dir):
  result = subprocess.run([sys.executable, '-c', SHARD_MAP_VS_AUTO, data_dir], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu', **EIGHT_DEVICES})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.splitlines()[-1])
  assert sorted(report) == ['data=8']
  for mesh, r in report.items():
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


@pytest.mark.slow  # 8 s; CI keeps test_dry_run_works_for_any_device_count and the WMT config's fsdp dry run
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
    output, _ = proc.communicate(timeout=120)  # the launcher stops the survivor; never waits on it
    assert proc.returncode == 137 and 'exited with status 137; stopping the others' in output, output[-3000:]
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert read_metrics(workdir, 'test') == []  # it did not finish

  newest = max(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  rerun = local_multihost(2, *args)
  output, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, output[-3000:]
  assert_resumed(output, workdir, newest)
  assert _test_loss(workdir) == test_losses['2 processes x 4 devices']  # resumed to the last digit


@pytest.mark.slow  # four launches, 40 s that CI cannot spare; CI resumes multi-process runs above
def test_a_run_resumes_on_another_number_of_hosts(data_dir, tmp_path):
  """Moving a job to a slice of another size: saved by 2 processes, resumed by 1, saved by 1,
  resumed by 2. Each start resumes at the saved step (the data position is the step), nothing is
  set aside, and the end is an uninterrupted run's. The one process holds the same 8-device mesh,
  so only the host count changes (on 1 device, float sums in another order drift by about 1e-4
  in test loss over hundreds of steps, resumed or not)."""
  def args(workdir, steps):  # a constant learning rate: extending train.steps changes no step
    return [*_digits_args(workdir, data_dir), f'--config.train.steps={steps}', '--config.checkpoint.every=20',
            '--config.optim.schedule=constant', '--config.train.eval_every=0', '--config.train.log_every=20']

  workdir = tmp_path / 'moved'
  first = local_multihost(2, *args(workdir, 40))
  output, _ = first.communicate(timeout=600)
  assert first.returncode == 0 and 'Resumed' not in output, output[-3000:]
  one = run_main(*args(workdir, 80), env=EIGHT_DEVICES)
  assert one.returncode == 0, one.stderr[-3000:]
  assert_resumed(one.stderr, workdir, 40)
  two = local_multihost(2, *args(workdir, 120))
  output, _ = two.communicate(timeout=600)
  assert two.returncode == 0, output[-3000:]
  assert_resumed(output, workdir, 80)
  unbroken = run_main(*args(tmp_path / 'unbroken', 120), env=EIGHT_DEVICES)
  assert unbroken.returncode == 0, unbroken.stderr[-3000:]
  assert abs(_test_loss(workdir) - _test_loss(tmp_path / 'unbroken')) <= 1e-5
  # Each start ends with an eval; only the last run's test record stays; no line twice.
  assert [(r['step'], r['split']) for r in read_metrics(workdir)] == [
      (20, 'train'), (40, 'train'), (40, 'eval'), (60, 'train'), (80, 'train'), (80, 'eval'), (100, 'train'),
      (120, 'train'), (120, 'eval'), (120, 'test')]


# One process's read of the checkpoint fails (its disk, its mount), the other's succeeds.
READ_FAILS_ON_ONE_HOST = '''
import errno, runpy, sys
import orbax.checkpoint as ocp
kind = sys.argv.pop(1)
read = ocp.StandardCheckpointHandler.restore
def restore(self, directory, *args, **kwargs):  # step 20's read fails as `kind` says
  if '/checkpoints/20/' in str(directory) and kind == 'io':
    raise OSError(errno.EIO, 'Input/output error', str(directory))
  if '/checkpoints/20/' in str(directory) and kind == 'corrupt':
    raise ValueError(f'DATA_LOSS: Error reading local file "{directory}/manifest.ocdbt": bad checksum')
  return read(self, directory, *args, **kwargs)
ocp.StandardCheckpointHandler.restore = restore
runpy.run_module('bigjax.main', run_name='__main__', alter_sys=True)
'''


def _two_processes_by_hand(args, kinds):
  """Runs the two processes of a run; process i's checkpoint reads fail as kinds[i] says."""
  port = _free_port()
  env = _host_env()
  hosts = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  procs = [subprocess.Popen([sys.executable, '-c', READ_FAILS_ON_ONE_HOST, kind, *args, *hosts,
                             f'--process_id={i}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i, kind in enumerate(kinds)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]  # a host left waiting would hang here
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], outputs


def test_hosts_agree_on_a_checkpoint_before_anything_is_renamed(data_dir, tmp_path):
  """Only process 1 fails to read the newest checkpoint. An I/O error: both processes stop with
  exit 5 and touch nothing. Corruption: both set it aside together and resume the one before."""
  workdir = tmp_path / 'run'
  args = [*_digits_args(workdir, data_dir), '--config.train.steps=40', '--config.checkpoint.every=20',
          '--config.optim.schedule=constant']  # so that the first run may stop at 20 of them
  first = run_main(*args, '--config.train.steps=20', '--config.checkpoint.every=10', env=ONE_DEVICE)
  assert first.returncode == 0, first.stderr[-3000:]
  before = tree_listing(workdir)
  codes, outputs = _two_processes_by_hand(args, ['none', 'io'])
  assert codes == [5, 5], [o[-2000:] for o in outputs]
  stopped = [o.strip().splitlines()[-1] for o in outputs]
  assert stopped[1].startswith(f'bigjax: stopped: checkpoint {workdir}/checkpoints/20 could not be read '
                               '(OSError: [Errno 5] Input/output error: ')
  assert 'another process could not read it' in stopped[0]
  assert tree_listing(workdir) == before

  codes, outputs = _two_processes_by_hand(args, ['none', 'corrupt'])
  assert codes == [0, 0], [o[-2000:] for o in outputs]
  assert 'Resumed from step 10 in' in outputs[0]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20', '20.corrupt', '40']


@pytest.mark.slow  # about a minute: the survivor waits out the heartbeat timeout
@pytest.mark.parametrize('victim', [0, 1])
def test_without_the_launcher_a_dead_process_stops_the_others(data_dir, tmp_path, victim):
  """Processes started by hand (as on real hosts): JAX's heartbeat (--heartbeat_timeout_s=30)
  tells the survivor its peer is gone; killing the coordinator's process ends the other at once."""
  port = _free_port()
  env = _host_env()
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
    survivor = procs[1 - victim]
    survivor.wait(timeout=300)  # only a guard against a hang: a survivor that never stops fails here
    assert survivor.returncode != 0
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


@pytest.mark.slow  # about a minute: a 2-process run, preempted, then resumed
def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(data_dir, tmp_path):
  """JAX's preemption sync point: the process that got SIGTERM and its peer stop at the same
  step, both exit 143 after checkpointing it, and the rerun resumes to the unbroken run's loss."""
  port = _free_port()
  env = _host_env()
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


SAME_TOKENIZER = '''
import sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from bigjax import data
from bigjax.config import ConfigError
from bigjax.data import tokenizers
words = ['def', 'return'] if sys.argv[2] == '0' else ['def', 'yield']
data._check_same_tokenizer(tokenizers.WordTokenizer(['def', 'return']))  # the same: passes
try:
  data._check_same_tokenizer(tokenizers.WordTokenizer(words))
  print('same')
except ConfigError as e:
  print(e)
'''


def test_a_host_whose_tokenizer_is_not_process_0s_is_stopped():
  port = _free_port()
  env = _host_env()
  procs = [subprocess.Popen([sys.executable, '-c', SAME_TOKENIZER, f'127.0.0.1:{port}', str(i)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
  verdicts = [out.strip().splitlines()[-1] for out, _ in outputs]  # after gloo's own lines
  assert verdicts[0] == 'same'
  assert verdicts[1].startswith('process 1 reads text with tokenizer word_')
  assert 'process 0 with word_' in verdicts[1]
