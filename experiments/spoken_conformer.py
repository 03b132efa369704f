"""Speech recognition: a Conformer encoder with a CTC head over characters.

  python -m bigjax.main --config=experiments/spoken_conformer.py:offline     # 2-core CPU, < 20 min
  python -m bigjax.main --config=experiments/spoken_conformer.py:offline --mode=transcribe --audio=a.wav
  python -m bigjax.data.espeak --text="a new sentence" --voice=en-us+f4 --out=a.wav   # a WAV to try

:offline trains on the spoken corpus (bigjax/data/spoken.py): English sentences from the standard
library's docstrings spoken by eSpeak NG voices at varied rates and pitches, with noise; its eval and
test splits hold sentences and voices that train never hears. It is synthesized on first use.
Result on a 2-core Xeon (AVX-512), from a fresh data dir: test CER 0.142, WER 0.477 (eval: 0.115,
0.441) in 16 min 27 s, of which 1 min 50 s builds the corpus; 1,400 steps at 1.5-2.0 steps/s.
On a 2-core AMD EPYC (Zen 4), also from a fresh data dir: test CER 0.144, WER 0.483 in 13 min 44 s.
Greedy decoding; the WER is high because a misspelt word counts whole, and the test's sentences hold
words train never spells. New sentences in voices no split uses, through --mode=transcribe: CER
0.116 (en-us+edward), 0.204 (en+linda) and 0.525 (en-gb-scotland+benjamin).

The model's front end (log-mel, per-utterance normalization, SpecAugment) runs on the device inside
the step; the host moves int16 samples (bigjax/audio.py). Batches are bucketed by duration.
For LibriSpeech, see experiments/librispeech_conformer.py.
"""

import ml_collections

from bigjax.config import base_config
from bigjax.models import conformer

VARIANTS = {
    # name: (size, batch, steps, lr, warmup)
    'offline': ('tiny', 32, 1400, 2e-3, 150),
}


def get_config(variant: str = 'offline') -> ml_collections.ConfigDict:
  size, batch, steps, lr, warmup = VARIANTS[variant]
  c = base_config()
  c.task = ml_collections.ConfigDict({
      'name': 'ctc',
      'beam_size': 1,  # greedy (best path); > 1: prefix beam search of that width
      'eval_generate_examples': 0,  # all of the eval split
  })
  c.data.name = 'spoken_corpus'
  c.data.tokenizer = 'byte'  # characters
  c.data.target_len = 120  # transcript tokens
  c.data.max_seconds = 6.0
  c.data.bucket = 8000  # samples: batches padded to the next half second of their longest utterance

  c.model = ml_collections.ConfigDict({'name': 'conformer_ctc', **conformer.SIZES[size]})
  c.model.dropout = 0.1
  c.model.scan_layers = False  # unrolled: faster on CPU at this depth
  c.optim.name = 'adamw'
  c.optim.lr = lr
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = warmup
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0

  c.train.steps = steps
  c.train.batch_size = batch
  c.train.eval_every = 350
  c.train.log_every = 100
  c.checkpoint.every = 500
  return c
