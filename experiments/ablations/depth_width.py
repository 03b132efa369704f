"""MLP depth against width: 1, 2 or 4 hidden layers of 32, 128 or 512 units.

  python -m bigjax.sweep --config=experiments/digits_mlp.py \
      --sweep=experiments/ablations/depth_width.py --seeds=3 --workdir=runs/ablations/depth_width
"""

from bigjax.sweep import product, sweep


def get_sweep():
  return product(sweep('model.depth', [1, 2, 4]), sweep('model.width', [32, 128, 512]))
