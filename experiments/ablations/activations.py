"""The tutorial's three activations, and GELU.

  python -m bigjax.sweep --config=experiments/digits_mlp.py \
      --sweep=experiments/ablations/activations.py --seeds=3 --workdir=runs/ablations/activations

Result: experiments/ablations/README.md (results.md, curves.png and bar.png land in the workdir).
"""

from bigjax.sweep import sweep


def get_sweep():
  return sweep('model.activation', ['sigmoid', 'tanh', 'relu', 'gelu'])
