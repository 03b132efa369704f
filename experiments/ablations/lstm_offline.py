"""From the tutorial's LSTM recipe to imdb_lstm.py:offline's, one change group at a time, on the
offline snippets (each row undoes part of the offline recipe; the last row is the recipe itself).

  python -m bigjax.sweep --config=experiments/imdb_lstm.py:offline \
      --sweep=experiments/ablations/lstm_offline.py --workdir=runs/ablations/lstm_offline

About 3.5 minutes a run on 2 CPU cores. Results: experiments/ablations/README.md.
"""

TUTORIAL_SIZES = {'model.embed_dim': 100, 'model.hidden': 200}
TUTORIAL_TRAINING = {'model.pooling': 'last', 'model.dropout': 0.0, 'model.word_dropout': 0.0,
                     'optim.lr': 1e-3, 'optim.schedule': 'constant'}


def get_sweep():
  return [
      {'name': 'tutorial', **TUTORIAL_SIZES, **TUTORIAL_TRAINING},  # the tutorial's model and training
      {'name': 'offline-recipe-tutorial-sizes', **TUTORIAL_SIZES},
      {'name': 'offline-recipe-no-word-dropout', 'model.word_dropout': 0.0},
      {'name': 'offline-recipe'},
  ]
