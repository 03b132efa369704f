"""Classification losses: softmax cross-entropy against MSE on one-hot targets (and per-class
sigmoid cross-entropy), the tutorial's comparison.

  python -m bigjax.sweep --config=experiments/digits_mlp.py \
      --sweep=experiments/ablations/losses.py --seeds=3 --workdir=runs/ablations/losses

The eval/test `loss` column is each variant's own loss, so it does not compare across rows:
compare accuracy and F1.
"""

from bigjax.sweep import sweep


def get_sweep():
  return sweep('task.loss', ['cross_entropy', 'mse', 'binary_cross_entropy'])
