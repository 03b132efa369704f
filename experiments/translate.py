"""Translation with an encoder-decoder Transformer (Transformer-base and its siblings).

  python -m bigjax.main --config=experiments/translate.py:offline        # 2-core CPU, < 20 min
  python -m bigjax.main --config=experiments/translate.py:offline --mode=generate \
      --text="This package contains the documentation."
  python -m bigjax.main --config=experiments/translate.py:wmt14_base     # GPU/TPU

:offline is English -> German on Debian's package descriptions and their human translations
(bigjax/data/debian.py): small (tens of thousands of pairs) and of one narrow domain, fetched by apt
on first use (or --config.data.source_dir=DIR). Result on a 2-core Xeon (AVX-512), data prepared:
test BLEU 15.61, chrF 37.29 (an earlier commit: 15.99 / 36.75) in about 19 min (1,200 steps at
1.2-1.5 steps/s with oneDNN's matmuls, and beam-4 decoding of the 1,789 test pairs, about 2 min).
The same figures on a 2-core AMD EPYC (Zen 4) in 18 min 35 s, the data prepared.
The retrieval baseline (benchmarks/seq2seq_baselines.py) scores 5.96 / 25.46 on the same references.
The pointer-generator head (model.pointer) makes the difference: without it, 5.90 / 24.68 in the
same 1,200 steps.

:wmt14_base / :wmt14_big need WMT14 en-de prepared as ArrayRecord (`tfds build wmt14_translate/de-en
--file_format=array_record`; they cannot run here). The literature: Transformer-base reaches about
27.3 BLEU on newstest2014 and Transformer-big about 28.4 (Vaswani et al. 2017, 100k / 300k steps
of 25k source + 25k target tokens). Ours decodes with beam 4 and alpha 0.6, as they did.

--dry_run with --config.mesh.data=1 --config.mesh.fsdp=8 on 8 simulated devices shows what fits;
it reads no data (the shapes come from the config). On TPU, the smallest slices that fit the
default mesh (data parallel), from `--dry_run --topology=SLICE` (bf16, splash attention):
  wmt14_base   v5e:2x2 (4 chips): 15.5 of 16 GiB     v5p:2x2x1 (4 chips): 15.5 of 95 GiB
  wmt14_big    v5e:2x4 (8 chips): 14.9 of 16 GiB     v5p:2x2x1 (4 chips): 27.6 of 95 GiB
"""

import ml_collections

from bigjax.config import base_config

SIZES = {
    # name: (encoder layers, decoder layers, d_model, heads, mlp ratio)
    'tiny': (2, 2, 64, 4, 4.0),
    'small': (3, 3, 256, 4, 4.0),
    'base': (6, 6, 512, 8, 4.0),
    'big': (6, 6, 1024, 16, 4.0),
}
VARIANTS = {
    # name: (data, size, vocab, source len, target len, batch, steps, lr, warmup)
    'offline': ('debian_en_de', 'small', 4096, 64, 64, 64, 1200, 2e-3, 100),
    'wmt14_base': ('wmt14_en_de', 'base', 32768, 256, 256, 512, 100_000, 7e-4, 4000),
    'wmt14_big': ('wmt14_en_de', 'big', 32768, 256, 256, 512, 300_000, 5e-4, 4000),
}


def get_config(variant: str = 'offline') -> ml_collections.ConfigDict:
  data, size, vocab, source_len, target_len, batch, steps, lr, warmup = VARIANTS[variant]
  encoder, decoder, d_model, heads, mlp_ratio = SIZES[size]
  big = size in ('base', 'big')
  c = base_config()
  c.task = ml_collections.ConfigDict({
      'name': 'seq2seq',
      'metrics': 'translation',  # BLEU and chrF (sacrebleu)
      'label_smoothing': 0.1,
      'beam_size': 4,
      'length_penalty': 0.6,  # GNMT alpha
      'eval_generate_examples': 300 if not big else 3000,  # periodic evals; test decodes all
      'max_length_ratio': 2.0,  # outputs end by 2 x source tokens + 10 (and data.target_len)
  })
  c.data.name = data
  c.data.tokenizer = 'sentencepiece'  # one model for source and target, trained on the train split
  c.data.vocab_size = vocab
  c.data.seq_len = source_len
  c.data.target_len = target_len
  c.data.bucket = 16  # batches of similar length: short synopses do not pay for long paragraphs
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
      'pointer': not big,  # pointer-generator: names and terms pass through (not in the WMT literature)
      'dropout': 0.1 if big else 0.0,  # a CPU run sees each pair about three times: no need
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
  c.train.cpu_matmul = 'onednn'  # x86 CPUs: oneDNN's matmuls (bigjax/cpu/xla_options.py)
  c.checkpoint.every = 500 if not big else 10_000
  return c
