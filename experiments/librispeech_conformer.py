"""Conformer-S with a CTC head over characters on LibriSpeech's 960 hours (GPU/TPU).

  python -m bigjax.main --config=experiments/librispeech_conformer.py:small --config.data.source_dir=DIR
  python -m bigjax.main --config=experiments/librispeech_conformer.py:small --mode=eval \
      --config.data.name=librispeech_other                  # dev-other and test-other

It needs the data prepared: LibriSpeech's archives extracted into DIR (bigjax/data/librispeech.py
says how; the first run converts them to ArrayRecord, FLAC decoded once), about 110 GB of int16. It
cannot run on a 2-core CPU; it has not been run to the end. Compiled for TPU without the data
(`--dry_run --topology=v5e:2x2`, bf16, every batch 256 x 35 s): on 4 v5e chips it fits with
--config.train.grad_accum=2 (16.5 of 16.9 usable GB a chip); without it the activations need 24 GB.

The paper (Gulati et al. 2020) reports Conformer(S), 10.3 M parameters, at 2.7 WER on test-clean and
6.3 on test-other without a language model, but with an RNN-T decoder and SpecAugment for 1,000s of
epochs on 2,048-utterance batches. This is CTC over characters, so expect it to trail those figures.
"""

import ml_collections

from bigjax.config import base_config
from bigjax.models import conformer


def get_config(size: str = 'small') -> ml_collections.ConfigDict:
  """size: a conformer.SIZES name (small: Conformer-S; tiny: the CPU model, for a quick look)."""
  c = base_config()
  c.task = ml_collections.ConfigDict({'name': 'ctc', 'beam_size': 1, 'eval_generate_examples': 1000})
  c.data.name = 'librispeech'  # librispeech_other: dev-other and test-other instead of the clean ones
  c.data.tokenizer = 'byte'  # characters; 'sentencepiece' with data.vocab_size for subword units
  c.data.target_len = 800  # 35 s at up to about 20 characters a second
  c.data.max_seconds = 35.0  # LibriSpeech's segments are at most 35 s (Panayotov et al. 2015)
  c.data.in_memory = False  # 960 hours do not fit in host memory: every batch padded to max_seconds
  c.data.source_dir = ''  # the extracted archives, read once to prepare the ArrayRecord dataset
  c.data.workers = 4

  c.model = ml_collections.ConfigDict({'name': 'conformer_ctc', **conformer.SIZES[size]})
  c.model.dropout = 0.1
  c.model.dtype = 'auto'  # bfloat16 on TPU and GPU
  c.model.scan_layers = True
  c.model.remat = 'dots_no_batch'

  c.optim.name = 'adamw'
  c.optim.lr = 2e-3
  c.optim.schedule = 'rsqrt'  # the paper's Transformer schedule: warmup, then 1 / sqrt(step)
  c.optim.warmup_steps = 10_000
  c.optim.weight_decay = 1e-6
  c.optim.clip_norm = 1.0

  c.train.steps = 200_000
  c.train.batch_size = 256
  c.train.eval_every = 10_000
  c.train.log_every = 100
  c.checkpoint.every = 5_000
  return c
