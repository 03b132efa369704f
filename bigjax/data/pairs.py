"""Text pairs (translation, summarization): a source and a target text per example.

One tokenizer, trained on both sides of the train split, reads source and target. Each
split is tokenized once: the source truncated to data.seq_len tokens, the target to
data.target_len tokens with its EOS, both padded at the end with the pad id, beside each
row's length (for bucketing by the longer of the two). A batch is
  {'inputs': source ids (B, S), 'decoder_inputs': BOS + target[:-1] (B, T), 'targets': target (B, T)}:
the decoder reads the target shifted right and predicts it token by token.
"""

import numpy as np
from absl import logging

from bigjax.data import tokenizers


def _padded(rows: list[list[int]], width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(rows), width), tokenizers.PAD, dtype)
  lengths = np.zeros(len(rows), np.int32)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths


def encode(tokenizer, sources, targets, *, source_len: int, target_len: int, dtype) -> dict:
  """The split's arrays: 'source', 'source_length', 'target' (EOS-terminated), 'target_length'."""
  logging.info('Tokenizing %d text pairs (once).', len(sources))
  source, source_length = _padded([tokenizer.encode(t)[:source_len] for t in sources], source_len, dtype)
  eos = [tokenizer.eos_id]
  target, target_length = _padded([tokenizer.encode(t)[:target_len - 1] + eos for t in targets], target_len,
                                  dtype)
  return {'source': source, 'source_length': source_length, 'target': target, 'target_length': target_length}


def pair_batch(batch: dict) -> dict:
  target = batch['target'].astype(np.int32)
  bos = np.full((len(target), 1), tokenizers.BOS, np.int32)
  return {'inputs': batch['source'].astype(np.int32),
          'decoder_inputs': np.concatenate([bos, target[:, :-1]], axis=1), 'targets': target}


def text_of(tokenizer, ids) -> str:
  """The text of token ids up to the first EOS or padding: what a reference or an output reads."""
  ids = [int(i) for i in ids]
  for stop in (tokenizer.eos_id, tokenizer.pad_id):
    if stop in ids:
      ids = ids[:ids.index(stop)]
  return tokenizer.decode(ids)


def texts(tokenizer, split) -> tuple[list[str], list[str]]:
  """(sources, references) of a tokenized split, as the trainer scores them."""
  return ([text_of(tokenizer, row) for row in split.arrays['source']],
          [text_of(tokenizer, row) for row in split.arrays['target']])
