"""A stand-in for `python -m bigjax.main` in sweep tests: the trainer's files, no JAX, fast.

  python tests/fake_main.py --config=ANY [--config.k=v ...] --workdir=W

Train records every step, a checkpoint (W/ckpt.json) after each step, resume from it, then
eval and test records whose accuracy depends only on model.activation and seed. An
activation of 'swish' fails as bigjax does on a bad value. Each start appends
'<pid> <step it started from>' to W/starts.txt, so tests can see what ran and from where.
Overrides: train.steps (default 6), fake.step_s (seconds per step, default 0.05).
"""

import json
import os
import sys
import time

ACCURACY = {'sigmoid': 0.5, 'tanh': 0.75, 'relu': 0.875, 'gelu': 0.9375}


def main(argv):
  overrides = dict(a[len('--config.'):].split('=', 1) for a in argv if a.startswith('--config.'))
  workdir = next(a.split('=', 1)[1] for a in argv if a.startswith('--workdir='))
  activation, seed = overrides.get('model.activation', 'relu'), int(overrides.get('seed', 0))
  if activation not in ACCURACY:
    print(f"bigjax: error: config.model.activation='{activation}' is invalid: choose one of "
          f"{', '.join(sorted(ACCURACY))}", file=sys.stderr)
    return 2
  steps, step_s = int(overrides.get('train.steps', 6)), float(overrides.get('fake.step_s', 0.05))
  os.makedirs(workdir, exist_ok=True)
  ckpt = os.path.join(workdir, 'ckpt.json')
  step = json.load(open(ckpt))['step'] if os.path.exists(ckpt) else 0
  with open(os.path.join(workdir, 'starts.txt'), 'a') as f:
    f.write(f'{os.getpid()} {step}\n')
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  kept = [line for line in open(metrics_path)] if os.path.exists(metrics_path) else []
  kept = [line for line in kept if json.loads(line)['step'] <= step]  # as the trainer redoes later steps
  with open(metrics_path, 'w') as f:
    f.writelines(kept)
  accuracy = ACCURACY[activation] + seed / 64  # exact in binary: the tests compare means exactly
  with open(metrics_path, 'a') as f:
    while step < steps:
      time.sleep(step_s)
      step += 1
      f.write(json.dumps({'step': step, 'split': 'train', 'loss': 1 / (step + seed), 'time': 0.0}) + '\n')
      f.flush()
      with open(ckpt + '.tmp', 'w') as c:
        json.dump({'step': step}, c)
      os.replace(ckpt + '.tmp', ckpt)
    for split in ('eval', 'test'):
      f.write(json.dumps({'step': step, 'split': split, 'loss': 1 - accuracy, 'accuracy': accuracy,
                          'time': 0.0}) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
