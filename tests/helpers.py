"""Helpers for tests that run bigjax as a user would."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(path: str):
  """A Python file that is not in a package (an experiment config, a benchmark), as a module."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def final_state(config, workdir):
  """The state of workdir's newest checkpoint, on the host; it must be the run's last step."""
  import jax  # noqa: PLC0415  (helpers also serve tests that never import jax)

  from bigjax import checkpoint, train  # noqa: PLC0415
  s = train.setup(config)
  with jax.set_mesh(s.mesh):
    mngr = checkpoint.manager(workdir, config.checkpoint, read_only=True)
    state, step = checkpoint.restore(mngr, s.abstract_state, read_only=True)
    mngr.close()
  assert step == config.train.steps
  return jax.device_get(state)


def assert_resumed(log: str, workdir, step: int) -> None:
  """The run logged that it resumed from `step` (not from 0, not another checkpoint), and no
  checkpoint of workdir was set aside as corrupt. `log`: its stderr, or caplog.text."""
  assert f'Resumed from step {step} in {workdir}' in log, log[-3000:]
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'corrupt' in n]


def tree_listing(path) -> list:
  """Every file and folder under path with its size: equal before and after means nothing was
  written, renamed or deleted."""
  return sorted((os.path.relpath(os.path.join(root, name), path),
                 os.path.getsize(os.path.join(root, name)) if name in names else -1)
                for root, folders, names in os.walk(path) for name in folders + names)


def tiny_lm_config(data_dir, **train_fields):
  """lm_gpt:tiny cut to a 2-layer, 32-wide byte-level model that trains 3 steps in seconds."""
  from experiments import lm_gpt  # noqa: PLC0415
  c = lm_gpt.get_config('tiny')
  c.data.data_dir = data_dir
  c.data.seq_len = 32
  c.data.tokenizer = 'byte'
  c.model.update({'num_layers': 2, 'd_model': 32, 'num_heads': 4})
  # XLA's own matmuls unless a test asks for oneDNN's (test_xla_options compares the two).
  c.train.update({'batch_size': 8, 'steps': 3, 'log_every': 1, 'cpu_matmul': 'xla', **train_fields})
  c.optim.warmup_steps = 0
  return c


def lm_batches(config, n):
  """The first n train batches of config's dataset, preprocessed, on the host."""
  import numpy as np  # noqa: PLC0415

  from bigjax import data  # noqa: PLC0415
  dataset = data.load(config.data)
  rows = np.arange(n * config.train.batch_size).reshape(n, -1)
  return [dataset.preprocess(dataset.splits['train'].read(r)) for r in rows]


def train_steps(config, batches):
  """(losses, final params on the host, compiled program text) of the train step bigjax.main runs
  (train.compile_train_step's, with config.train.cpu_matmul's matmuls), one step per host batch."""
  import jax  # noqa: PLC0415

  from bigjax import sharding, train  # noqa: PLC0415
  s = train.setup(config)
  with sharding.active(s.mesh, s.rules):
    step, compiled = train.compile_train_step(s, config)
    state, losses = s.init(), []
    for batch in batches:
      state, metrics = step(state, sharding.shard_batch(batch, s.mesh))
      losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params), compiled.as_text()


def overridden(config, **fields):
  """config with `section__key=value` fields set in place (a `--config.section.key` flag's
  in-process twin); returns it."""
  for path, value in fields.items():
    section, key = path.split('__')
    config[section][key] = value
  return config


def run_main(*args, timeout=600, env=None, **popen_kwargs):
  """Runs `python -m bigjax.main ARGS` from the repo root; returns the CompletedProcess.

  `env` adds to the environment, e.g. XLA_FLAGS for simulated devices.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.run([sys.executable, '-m', 'bigjax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, **popen_kwargs)


def start_main(*args, env=None, **popen_kwargs):
  """Starts `python -m bigjax.main ARGS` from the repo root in the background; returns the Popen."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  popen_kwargs.setdefault('stdout', subprocess.DEVNULL)
  popen_kwargs.setdefault('stderr', subprocess.DEVNULL)
  return subprocess.Popen([sys.executable, '-m', 'bigjax.main', *args], cwd=REPO, env=env, **popen_kwargs)


def signal_when(proc, ready, signum=signal.SIGKILL, timeout=300) -> bool:
  """Sends proc `signum` as soon as ready() holds (polled every few ms) and waits for it to end;
  False if it ended first."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if ready():
      proc.send_signal(signum)
      proc.wait(timeout=120)
      return True
    time.sleep(0.003)
  return False


def corrupt_checkpoint(step_dir, how: str) -> None:
  """'truncate' every array data file of a checkpoint to 10 bytes, or 'delete' its OCDBT manifest."""
  if how == 'truncate':
    for path in glob.glob(os.path.join(step_dir, 'state', 'd', '*')):
      with open(path, 'r+b') as f:
        f.truncate(10)
  else:
    os.remove(os.path.join(step_dir, 'state', 'manifest.ocdbt'))


def read_metrics(workdir, split=None):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if split is None or r['split'] == split]

# Train-line fields that measure the machine, not the run: they differ between equal runs.
RATES = ('time', 'examples_per_s', 'tokens_per_s', 'mfu')


def tensorboard_tags(workdir) -> set:
  """Every summary tag in the workdir's TensorBoard event files (TFRecord framing, read by hand)."""
  import struct

  from tensorboardX.proto.event_pb2 import Event
  tags = set()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      content = f.read()
    offset = 0
    while offset < len(content):  # record: length (8 bytes), its CRC (4), data, data CRC (4)
      (length,) = struct.unpack('<Q', content[offset:offset + 8])
      event = Event.FromString(content[offset + 12:offset + 12 + length])
      tags.update(value.tag for value in event.summary.value)
      offset += 16 + length
  return tags


def build_model(name: str, **fields):
  """The registry's model `name` with these model fields, checked as a config's are; ten outputs."""
  from bigjax import models  # noqa: PLC0415
  from bigjax.config import base_config  # noqa: PLC0415
  c = base_config().model
  c.name = name
  c.update(fields)
  models.check_config(c)
  return models.build(c, num_outputs=10)
