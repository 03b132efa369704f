"""LeNet-style CNN on the offline 8x8 digits.

  python -m bigjax.main --config=experiments/digits_cnn.py --workdir=runs/digits_cnn

Result (2026-11-28, 2-core x86_64 CPU, no GPU): test accuracy 0.9833, macro F1 0.9845,
eval accuracy 0.9833, in 34 s wall time (about 67 steps/s). Bitwise repeatable.
"""

from bigjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'digits'
  config.model.name = 'lenet'
  config.model.features = (32, 64)  # two 3x3 conv + 2x2 max-pool stages: 8x8 -> 4x4 -> 2x2
  config.model.hidden = 128
  config.model.dropout = 0.1
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.train.steps = 1500
  config.train.batch_size = 128
  config.train.eval_every = 500
  config.checkpoint.every = 500
  return config
