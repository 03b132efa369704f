"""Text classification: the LSTM classifier against a Transformer encoder, same data, vocabulary,
length and batch (each variant names its whole config, so no --config is needed).

  python -m bigjax.sweep --sweep=experiments/ablations/text.py --seeds=3 --workdir=runs/ablations/text

Offline (python_stdlib_snippets). One seed of each takes about 3.5 and 11 minutes on 2 CPU cores;
for IMDB, point both configs at it (drop ':offline').
"""


def get_sweep():
  return [{'config': 'experiments/imdb_lstm.py:offline'},
          {'config': 'experiments/imdb_transformer.py:offline'}]
