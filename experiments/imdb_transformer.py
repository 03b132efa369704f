"""The encoder alternative to experiments/imdb_lstm.py: a small Transformer encoder (the LM's
blocks without the causal mask), mean-pooled over real tokens, on IMDB reviews or, with
`:offline`, on the stdlib snippets.

  python -m bigjax.main --config=experiments/imdb_transformer.py            # needs imdb_reviews
  python -m bigjax.main --config=experiments/imdb_transformer.py:offline    # no network

Same data, vocabulary, length and batch as imdb_lstm.py, so the two compare directly.
Result, :offline (2-core AVX-512 Xeon, XLA's matmuls): test macro F1 0.690, accuracy 0.752, in
6 min 33 s (4 min 1 s with oneDNN's, which dropout now rules out); speed in docs/performance.md.
IMDB: not run here (no network).
"""

import ml_collections

from bigjax.config import base_config


def get_config(variant: str = 'imdb') -> ml_collections.ConfigDict:
  offline = variant == 'offline'
  c = base_config()
  c.data.name = 'python_stdlib_snippets' if offline else 'imdb_reviews'
  c.data.tokenizer = 'word'
  c.data.vocab_size = 10_000
  c.data.seq_len = 256
  c.data.bucket = 32  # batches of similar lengths, cut to a multiple of 32

  c.model = ml_collections.ConfigDict({
      'name': 'transformer_classifier',
      'vocab_size': 0,  # 0: the tokenizer's
      'num_layers': 2,
      'd_model': 128,
      'num_heads': 4,
      'mlp_ratio': 4.0,
      'positions': 'learned',  # learned | rope
      'max_length': 256,  # = data.seq_len: one learned position per token
      'pooling': 'mean',  # mean | max, over real tokens
      'dropout': 0.1,
  })

  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0

  c.train.batch_size = 64
  c.train.steps = 1000 if offline else 3520  # IMDB: 10 epochs of 22,500
  c.train.eval_every = 250 if offline else 352
  c.train.log_every = 50
  # XLA's own matmuls: oneDNN's give wrong numbers with dropout (bigjax/cpu/xla_options.py)
  c.checkpoint.every = c.train.eval_every
  return c
