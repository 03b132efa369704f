"""Helpers for tests that run bigjax as a user would."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=600, env=None, **popen_kwargs):
  """Runs `python -m bigjax.main ARGS` from the repo root; returns the CompletedProcess.

  `env` adds to the environment, e.g. XLA_FLAGS for simulated devices.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.run([sys.executable, '-m', 'bigjax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, **popen_kwargs)


def read_metrics(workdir, split=None):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if split is None or r['split'] == split]

# Train-line fields that measure the machine, not the run: they differ between equal runs.
RATES = ('time', 'examples_per_s', 'tokens_per_s', 'mfu')


def tensorboard_tags(workdir) -> set:
  """Every summary tag in the workdir's TensorBoard event files (TFRecord framing, read by hand)."""
  import glob
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
