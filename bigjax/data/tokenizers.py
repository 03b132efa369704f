"""Tokenizers: text <-> token ids, one interface, saved next to the data they were made for.

  tokenizer.encode(text) -> list[int]     tokenizer.decode(ids) -> str
  tokenizer.vocab_size, pad_id, bos_id, eos_id
  tokenizer.token_bytes: np.ndarray, the UTF-8 bytes each id stands for (0 for specials),
                         which turns a loss per token into bits per byte
  save(tokenizer, path); load(path); fingerprint(tokenizer): a name for what it produces

`byte`: 256 bytes after 3 specials; nothing to train, any text round-trips.
`sentencepiece`: BPE trained with the sentencepiece library on the training text,
with byte fallback so any text still round-trips.
`word`: the tutorial's vocabulary: lowercased words and punctuation marks, the
vocab_size most frequent in the training text, anything else one unknown id.
"""

import collections
import hashlib
import io
import json
import re

import numpy as np
from etils import epath

from bigjax import files

PAD, BOS, EOS = 0, 1, 2  # the same ids in every tokenizer here
KINDS = ('byte', 'sentencepiece', 'word')


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

  def to_bytes(self) -> bytes:
    return json.dumps({'kind': self.kind}).encode()


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

  def to_bytes(self) -> bytes:
    return self.model_proto


class WordTokenizer:
  kind = 'word'
  pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, 3
  _offset = 4
  # A word is a run of letters and digits; a run of underscores and any other non-space character
  # stand alone. camelCase and snake_case names split into their words, so that code shares
  # `loop` across `get_event_loop` and `eventLoop` (English text is barely touched).
  # HTML line breaks (IMDB's reviews are full of them) are spaces.
  _pattern = re.compile(r'[^\W_]+|_+|[^\w\s]')
  _camel = re.compile(r'(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])')  # getURLPath: get URL Path
  _line_break = re.compile(r'<br\s*/?>', re.IGNORECASE)

  def __init__(self, words):
    self.words = list(words)
    self.ids = {w: i + self._offset for i, w in enumerate(self.words)}
    self.vocab_size = len(self.words) + self._offset

  @classmethod
  def split(cls, text: str) -> list[str]:
    return cls._pattern.findall(cls._camel.sub(' ', cls._line_break.sub(' ', text)).lower())

  @classmethod
  def train(cls, texts, vocab_size: int) -> 'WordTokenizer':
    """The vocab_size most frequent words; ties broken alphabetically, so the vocabulary is fixed."""
    counts = collections.Counter(w for text in texts for w in cls.split(text))
    return cls(sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size])

  def encode(self, text: str) -> list[int]:
    return [self.ids.get(w, self.unk_id) for w in self.split(text)]

  def decode(self, ids) -> str:
    return ' '.join(self.words[i - self._offset] if i >= self._offset else '<unk>'
                    for i in ids if i not in (PAD, BOS, EOS))

  @property
  def token_bytes(self) -> np.ndarray:  # a word's letters; the spaces between words are not counted
    return np.array([0] * self._offset + [len(w.encode('utf-8')) for w in self.words], np.int32)

  def to_bytes(self) -> bytes:
    return json.dumps({'kind': self.kind, 'words': self.words}).encode()


def save(tokenizer, path: str) -> None:
  """Writes the tokenizer atomically: a killed run never leaves half a file."""
  with files.replaced_atomically(path, 'wb') as f:
    f.write(tokenizer.to_bytes())


def load(path: str):
  """The tokenizer that save() wrote at path."""
  content = epath.Path(path).read_bytes()
  if not content.startswith(b'{'):
    return SentencePieceTokenizer(content)
  fields = json.loads(content)
  return WordTokenizer(fields['words']) if fields['kind'] == 'word' else ByteTokenizer()


def fingerprint(tokenizer) -> str:
  """Names what a tokenizer produces: caches of token ids are keyed by it."""
  return f'{tokenizer.kind}_{hashlib.md5(tokenizer.to_bytes()).hexdigest()[:10]}'


def get_or_train(kind: str, vocab_size: int, directory: str, training_texts):
  """The tokenizer of this kind cached in directory, trained there (once) if missing.

  training_texts: a callable returning an iterable of the training split's texts.
  """
  if kind == 'byte':
    return ByteTokenizer()
  path = epath.Path(directory) / f'{kind}_{vocab_size}.{"model" if kind == "sentencepiece" else "json"}'
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = {'sentencepiece': SentencePieceTokenizer, 'word': WordTokenizer}[kind]
    save(trainer.train(training_texts(), vocab_size), path)
  return load(path)
