"""benchmarks/runner.py, bigjax's side of the *_vs_pytorch.py benchmarks (CI has no torch, so the
scripts themselves do not run here): it must train exactly as bigjax.main's train step does."""

import os

import jax
import numpy as np

from helpers import lm_batches, load_script, tiny_lm_config, train_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_benchmarks_runner_takes_the_trainers_steps(data_dir):
  runner = load_script(os.path.join(REPO, 'benchmarks', 'runner.py'))
  config = tiny_lm_config(data_dir)
  batches = lm_batches(config, 3)
  a = runner.Bigjax(config)
  losses = [a.run([batch]) for batch in batches]
  expected_losses, expected_params, _ = train_steps(config, batches)
  assert losses == expected_losses and losses[-1] < losses[0]
  for got, want in zip(jax.tree.leaves(jax.device_get(a.state.params)), jax.tree.leaves(expected_params),
                       strict=True):
    np.testing.assert_array_equal(got, want)
  logits = a.logits(batches[0])
  assert logits.shape[:2] == batches[0]['inputs'].shape and np.isfinite(logits).all()
