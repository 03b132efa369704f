"""The tutorial's optimizers: full-batch gradient descent, SGD, SGD with momentum, Adam, AdamW.

  python -m bigjax.sweep --config=experiments/digits_mlp.py \
      --sweep=experiments/ablations/optimizers.py --seeds=3 --workdir=runs/ablations/optimizers

Each optimizer gets a learning rate in its own usual range (the cosine schedule of the base
config applies to all): a fair comparison tunes lr per optimizer, so treat this as a starting grid.
Full-batch gradient descent takes the whole 1,257-image train split per step (batch_size=-1).
"""

from bigjax.sweep import sweep, zipped


def get_sweep():
  return zipped(
      sweep('name', ['gd', 'sgd', 'momentum', 'adam', 'adamw']),  # the rows' names
      sweep('optim.name', ['sgd', 'sgd', 'momentum', 'adam', 'adamw']),
      sweep('train.batch_size', [-1, 128, 128, 128, 128]),  # -1: the whole train split (gradient descent)
      sweep('optim.lr', [0.5, 0.1, 0.05, 1e-3, 1e-3]),
      sweep('optim.weight_decay', [0.0, 0.0, 0.0, 0.0, 0.01]),  # adamw: decoupled, scaled by lr
  )
