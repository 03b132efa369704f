"""Abstractive summarization with an encoder-decoder Transformer.

  python -m bigjax.main --config=experiments/summarize.py:offline        # 2-core CPU, < 20 min
  python -m bigjax.main --config=experiments/summarize.py:offline --mode=generate \
      --text="GNU Make is a utility which controls the generation of executables from source files."
  python -m bigjax.main --config=experiments/summarize.py:cnn_dailymail  # GPU/TPU

:offline summarizes each of Debian's English package descriptions into its one-line synopsis
(bigjax/data/debian.py): tens of thousands of examples of one narrow domain, fetched by apt on first
use (or --config.data.source_dir=DIR). Result on a 2-core Xeon (AVX-512), data prepared: test
ROUGE-1 / 2 / L 28.21 / 11.47 / 26.60 (an earlier commit: 27.56 / 10.89 / 25.86) in about 19 min
(1,000 steps at about 1 step/s, beam-4 decoding of the 3,104 test descriptions about 90 s); the
same figures on a 2-core AMD EPYC (Zen 4) in 18 min 59 s, the data prepared. The lead
baseline (benchmarks/seq2seq_baselines.py) scores 25.66 / 9.45 / 23.23. The pointer-generator
(model.pointer) makes the difference: without it, 17.26 / 5.27 / 16.31. Outputs still repeat phrases
at times ("Lua bitop fast bitop fast"), what a coverage penalty (See et al. 2017) would address.
XLA's matmuls: oneDNN's give wrong numbers with dropout (bigjax/cpu/xla_options.py).

:cnn_dailymail and :xsum need the TFDS datasets prepared as ArrayRecord (`tfds build cnn_dailymail
--file_format=array_record`; they cannot run here). The literature, for scale: on CNN/DailyMail the
lead-3 baseline scores about 40.3 / 17.7 / 36.6 ROUGE-1/2/L and pretrained BART-large 44.2 / 21.3
/ 40.9; on XSum lead is weak (16.3 / 1.6 / 12.0) and BART-large reaches 45.1 / 22.3 / 37.3
(Lewis et al. 2020). A Transformer-base trained from scratch lands well below the pretrained
models.
"""

import ml_collections

from bigjax.config import base_config

SIZES = {
    # name: (encoder layers, decoder layers, d_model, heads, mlp ratio)
    'tiny': (2, 2, 64, 4, 4.0),
    'small': (3, 2, 256, 4, 4.0),
    'base': (6, 6, 512, 8, 4.0),
}
VARIANTS = {
    # name: (data, size, vocab, source len, target len, batch, steps, lr, warmup)
    'offline': ('debian_summaries', 'small', 4096, 96, 24, 64, 1000, 2e-3, 100),
    'cnn_dailymail': ('cnn_dailymail', 'base', 32768, 512, 128, 128, 200_000, 5e-4, 4000),
    'xsum': ('xsum', 'base', 32768, 512, 64, 128, 100_000, 5e-4, 4000),
}


def get_config(variant: str = 'offline') -> ml_collections.ConfigDict:
  data, size, vocab, source_len, target_len, batch, steps, lr, warmup = VARIANTS[variant]
  encoder, decoder, d_model, heads, mlp_ratio = SIZES[size]
  big = size == 'base'
  c = base_config()
  c.task = ml_collections.ConfigDict({
      'name': 'seq2seq',
      'metrics': 'summary',  # ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum (rouge-score)
      'label_smoothing': 0.1,
      'beam_size': 4,
      'length_penalty': 0.6 if big else 0.0,  # GNMT alpha
      'eval_generate_examples': 300 if not big else 2000,  # periodic evals; test decodes all
      'max_length_ratio': 1.0,  # a summary is no longer than its source
  })
  c.data.name = data
  c.data.tokenizer = 'sentencepiece'
  c.data.vocab_size = vocab
  c.data.seq_len = source_len
  c.data.target_len = target_len
  c.data.bucket = 32  # batches of similar length: short texts do not pay for long ones
  c.data.source_dir = ''  # Debian only: a folder of apt lists to read instead of fetching them

  c.model = ml_collections.ConfigDict({
      'name': 'transformer_seq2seq',
      'num_layers': encoder,
      'num_decoder_layers': decoder,
      'd_model': d_model,
      'num_heads': heads,
      'mlp_ratio': mlp_ratio,
      'mlp': 'gelu',
      'norm': 'layernorm',
      'positions': 'rope',
      'shared_embedding': True,
      'tied_embedding': True,
      'dropout': 0.1,
      'pointer': True,  # pointer-generator: a summary reuses its source's rare words
      'attention': 'auto',  # splash on TPU, cuDNN on GPU, heads-major einsums on CPU
      'attention_block': 512,  # splash's query and key blocks
      'dtype': 'auto',
      'scan_layers': big,
      'remat': 'dots_no_batch' if big else 'none',
  })
  c.optim.name = 'adamw'
  c.optim.lr = lr
  c.optim.schedule = 'rsqrt' if big else 'cosine'
  c.optim.warmup_steps = warmup
  c.optim.weight_decay = 0.0 if big else 0.01
  c.optim.clip_norm = 1.0

  c.train.steps = steps
  c.train.batch_size = batch
  c.train.eval_every = 0 if not big else 10_000  # offline: one eval at the end, to fit 20 minutes
  c.train.log_every = 100
  c.checkpoint.every = 500 if not big else 10_000
  return c
