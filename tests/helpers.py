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
