"""Tokenizers: text <-> token ids, one interface, saved next to the data they were made for.

  tokenizer.encode(text) -> list[int]     tokenizer.decode(ids) -> str
  tokenizer.vocab_size, pad_id, bos_id, eos_id
  tokenizer.token_bytes: np.ndarray, the UTF-8 bytes each id stands for (0 for specials),
                         which turns a loss per token into bits per byte
  tokenizer.save(path); load(path)

`byte`: 256 bytes after 3 specials; nothing to train, any text round-trips.
`sentencepiece`: BPE trained with the sentencepiece library on the training text,
with byte fallback so any text still round-trips.
"""

import io
import json
import os

import numpy as np

PAD, BOS, EOS = 0, 1, 2  # the same ids in every tokenizer here
KINDS = ('byte', 'sentencepiece')


class ByteTokenizer:
  kind = 'byte'
  pad_id, bos_id, eos_id = PAD, BOS, EOS
  _offset = 3
  vocab_size = 256 + _offset

  def encode(self, text: str) -> list[int]:
    return [b + self._offset for b in text.encode('utf-8')]

  def decode(self, ids) -> str:
    return bytes(i - self._offset for i in ids if i >= self._offset).decode('utf-8', errors='replace')

  @property
  def token_bytes(self) -> np.ndarray:
    return np.array([0] * self._offset + [1] * 256, np.int32)

  def save(self, path: str) -> None:
    with open(path, 'w') as f:
      json.dump({'kind': self.kind}, f)


class SentencePieceTokenizer:
  kind = 'sentencepiece'
  pad_id, bos_id, eos_id = PAD, BOS, EOS

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # only this tokenizer needs it
    self.model_proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.processor.get_piece_size()

  @classmethod
  def train(cls, texts, vocab_size: int) -> 'SentencePieceTokenizer':
    """BPE over the texts' non-empty lines (SentencePiece skips over-long 'sentences'; a
    newline, never seen inside a line, is then a byte-fallback token of its own)."""
    import sentencepiece as spm
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=model, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, vocab_size=vocab_size, model_type='bpe',
        byte_fallback=True, pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=3, character_coverage=1.0,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name='identity', add_dummy_prefix=False, max_sentence_length=1 << 16,
        num_threads=1, minloglevel=2)
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    return self.processor.encode(text)

  def decode(self, ids) -> str:
    return self.processor.decode([int(i) for i in ids if i not in (PAD, BOS, EOS)])

  @property
  def token_bytes(self) -> np.ndarray:
    sizes = []
    for i in range(self.vocab_size):
      if self.processor.is_control(i) or self.processor.is_unknown(i):
        sizes.append(0)
      elif self.processor.is_byte(i):
        sizes.append(1)
      else:
        sizes.append(len(self.processor.id_to_piece(i).replace('\u2581', ' ').encode('utf-8')))
    return np.array(sizes, np.int32)

  def save(self, path: str) -> None:
    with open(path, 'wb') as f:
      f.write(self.model_proto)


def load(path: str):
  """The tokenizer saved at path by either class's save()."""
  with open(path, 'rb') as f:
    content = f.read()
  if content.startswith(b'{'):
    assert json.loads(content)['kind'] == 'byte'
    return ByteTokenizer()
  return SentencePieceTokenizer(content)


def get_or_train(kind: str, vocab_size: int, directory: str, training_texts):
  """The tokenizer of this kind cached in directory, trained there (once) if missing.

  training_texts: a callable returning an iterable of the training split's texts.
  """
  if kind == 'byte':
    return ByteTokenizer()
  path = os.path.join(directory, f'sentencepiece_{vocab_size}.model')
  if not os.path.exists(path):
    os.makedirs(directory, exist_ok=True)
    tokenizer = SentencePieceTokenizer.train(training_texts(), vocab_size)
    tokenizer.save(path + '.tmp')
    os.replace(path + '.tmp', path)  # atomic: a killed run never leaves half a model
  return load(path)
