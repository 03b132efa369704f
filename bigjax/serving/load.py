"""An export (python -m bigjax.export) loaded with jax alone: no model code, no config.

  from bigjax.serving import load
  model = load.load('runs/imdb/export')
  model.warm(max_batch=32)                     # every bucket shape compiled now, none later
  model.run([model.prepare({'text': 'a fine film'})])   # [{'label': ..., 'probabilities': {...}}]

  model.call(*inputs) runs the exported function on arrays shaped as metadata['inputs'] says.

`prepare` does one request's host-side work (tokenize, decode an image or a WAV file) and raises
BadInput or TooLarge with a one-line message; `run` pads a list of prepared examples to the
smallest compiled bucket, makes one call, and returns one JSON-able result per example. The server
(bigjax/serving/server.py) batches requests through these two. What an export holds, and what each
task's function takes, is in bigjax/export.py.
"""

import io
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.data import images, pairs, speech, tokenizers

FORMAT = 'bigjax-stablehlo-1'  # export.py writes it; a later layout changes the number
TASKS = ('classify', 'sample', 'generate', 'transcribe')
AUDIO_SECONDS = (2, 4, 8, 16)  # audio length buckets; longer clips are refused
MAX_IMAGE_PIXELS = 4096 * 4096
# A call's fixed cost per position (a loop step, a kernel launch), in rows: a group of lengths is run apart
# only when that saves more padding than this costs.
CALL_ROWS = 8


class BadInput(ValueError):
  """A request the model cannot read (an undecodable image, a malformed WAV, an empty prompt)."""


class TooLarge(ValueError):
  """An input over the model's length."""


class Prepared(NamedTuple):
  arrays: dict  # one example's arrays, without a batch axis; text and audio of their own length
  length: int  # what decides its length bucket
  options: dict  # the request's per-example settings (a continuation's max_new_tokens)


def _fit(buckets, size: int) -> int:
  """The smallest bucket that holds size."""
  return min(b for b in buckets if b >= size)


def _batch_buckets(max_batch: int) -> list[int]:
  """Powers of two up to max_batch, and max_batch: a batch is padded by less than half."""
  return sorted({max_batch} | {1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch})


class Export:
  """A loaded export. Not thread-safe: one thread calls run at a time (the server's batcher)."""

  def __init__(self, path: str):
    with open(os.path.join(path, 'metadata.json')) as f:
      self.metadata = json.load(f)
    self.task = self.metadata.get('task')
    if self.metadata.get('format') != FORMAT or self.task not in TASKS:
      raise ValueError(f'{path} is a {self.metadata.get("format")!r} export of task {self.task!r} (bigjax '
                       f'{self.metadata.get("bigjax_version")}); this bigjax reads {FORMAT}: export it again')
    with open(os.path.join(path, 'function.stablehlo'), 'rb') as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(path, 'params.npz'), allow_pickle=False) as arrays:
      stored = [arrays[k] for k in sorted(arrays.files)]
    # int4 and bfloat16 are stored as unsigned integers of their width (numpy has no such types)
    self.params = [x.view(jnp.dtype(name)) for x, name in zip(stored, self.metadata['params']['dtypes'])]
    text = self.metadata.get('text')
    self.tokenizer = tokenizers.load(os.path.join(path, text['tokenizer'])) if text else None
    self._device_params = jax.device_put(self.params)
    self._compiled = {}  # (batch, length) -> the compiled function of (params, *inputs)
    self._max_batch = 0  # warm's

  def call(self, *inputs):
    """The exported function on arrays shaped as metadata['inputs'] says (any batch, any length)."""
    return self.exported.call(self._device_params, *inputs)

  # --- host side: one request's example -------------------------------------------------------------
  def prepare(self, item: dict) -> Prepared:
    prepare = {'classify': self._prepare_classify, 'sample': self._prepare_sample,
               'generate': self._prepare_generate, 'transcribe': self._prepare_transcribe}[self.task]
    return prepare(item)

  def _prepare_classify(self, item):
    if 'image' in item:
      if 'image' not in self.metadata:
        raise BadInput('this model classifies text: send texts, not images')
      return Prepared({'inputs': self._image(item['image'])}, 0, {})
    if self.tokenizer is None:
      raise BadInput('this model classifies images: send images, not texts')
    seq_len = self.metadata['text']['max_tokens']
    ids = self.tokenizer.encode(item['text'])[:seq_len]  # truncated, as in training
    return Prepared({'inputs': np.asarray(ids, np.int32)}, self._padded_length(len(ids)), {})

  def _padded_length(self, tokens: int) -> int:
    """The length a text is padded to: max_tokens, or less where padding changes nothing."""
    lengths = self._lengths()
    return _fit(lengths, min(tokens, lengths[-1]))

  def _image(self, content: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (image models only)
    height, width, channels = self.metadata['image']['shape']
    try:
      with Image.open(io.BytesIO(content)) as opened:  # reads the header only, so far
        if opened.width * opened.height > MAX_IMAGE_PIXELS:  # a small file can decode to gigabytes
          raise TooLarge(f'the image is {opened.width}x{opened.height}; this server takes at most '
                         f'{MAX_IMAGE_PIXELS} pixels')
        image = opened.convert('L' if channels == 1 else 'RGB')
      if self.metadata['image']['resize']:  # datasets of varied sizes: the eval crop
        pixels = images.center_crop(np.asarray(image), height)
      else:
        pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    except TooLarge:
      raise
    except (UnidentifiedImageError, OSError, ValueError) as e:
      raise BadInput(f'not a readable image ({type(e).__name__}): send PNG or JPEG bytes') from None
    pixels = pixels.reshape(height, width, channels)
    meta = self.metadata['image']
    return images.normalize(pixels[None], meta['mean'], meta['std'])[0]

  def _prepare_sample(self, item):
    limits = self.metadata['sample']
    new = int(item.get('max_new_tokens', limits['max_new_tokens']))
    if new < 1:
      raise BadInput('max_new_tokens must be >= 1')
    if new > limits['max_new_tokens']:
      raise TooLarge(f'max_new_tokens={new}: this export continues by at most {limits["max_new_tokens"]} '
                     f'(python -m bigjax.export --max_new_tokens)')
    ids = self.tokenizer.encode(item['prompt']) if item['prompt'] else [self.tokenizer.eos_id]
    if len(ids) > limits['max_prompt_tokens']:
      raise TooLarge(f'the prompt is {len(ids)} tokens; this model takes at most '
                     f'{limits["max_prompt_tokens"]}')
    options = {name: item.get(name, default) for name, default in
               (('temperature', 0.8), ('top_k', 40), ('top_p', 0.95), ('seed', 0))}
    if options['temperature'] < 0 or options['top_k'] < 0 or not 0 < options['top_p'] <= 1:
      raise BadInput('temperature must be >= 0, top_k >= 0 and top_p in (0, 1]')
    return Prepared({'tokens': np.asarray(ids, np.int32)}, len(ids), {'max_new_tokens': new, **options})

  def _prepare_generate(self, item):
    seq_len = self.metadata['text']['max_tokens']
    ids = self.tokenizer.encode(item['text'])
    if len(ids) > seq_len:
      raise TooLarge(f'the text is {len(ids)} tokens; this model reads at most {seq_len}')
    if item.get('beam_size') not in (None, self.metadata['beam_size']):
      raise BadInput(f'beam_size={item["beam_size"]}: this export searches with {self.metadata["beam_size"]} '
                     f'beams (export the run again with another config.task.beam_size)')
    return Prepared({'inputs': np.asarray(ids, np.int32)}, self._padded_length(len(ids)), {})

  def _prepare_transcribe(self, item):
    from bigjax import audio  # noqa: PLC0415 (speech models only; it reads WAV files with scipy)
    rate = self.metadata['audio']['sample_rate']
    try:
      samples = audio.read_wav(item['audio'], rate)
    except ValueError as e:  # bigjax's ConfigError, one line
      raise BadInput(str(e)) from None
    if len(samples) > AUDIO_SECONDS[-1] * rate:
      raise TooLarge(f'the audio is {len(samples) / rate:.1f} s; this server takes at most '
                     f'{AUDIO_SECONDS[-1]} s')
    return Prepared({'inputs': samples}, len(samples), {})

  # --- device side: a batch -------------------------------------------------------------------------
  def _lengths(self) -> list[int]:
    if self.task == 'sample':
      most = self.metadata['sample']['max_prompt_tokens']
      return sorted({max(min(8, most), most // 4), max(min(8, most), most // 2), most})
    if self.task == 'transcribe':  # the lengths the export takes: offset + a multiple
      meta = self.metadata['audio']
      step, offset = meta['length_multiple'], meta['length_offset']
      return [offset + step * -(-(s * meta['sample_rate'] - offset) // step) for s in AUDIO_SECONDS]
    if self.tokenizer is None:
      return [0]
    most, bucket = self.metadata['text']['max_tokens'], self.metadata['text'].get('length_bucket', 0)
    lengths, length = {most}, bucket
    while 0 < length < most:  # doubling from the config's bucket: a text is padded by less than half
      lengths.add(length)
      length *= 2
    return sorted(lengths)

  def buckets(self, max_batch: int) -> list[tuple[int, int]]:
    """(batch, length) shapes that run() pads to."""
    return [(b, n) for b in _batch_buckets(max_batch) for n in self._lengths()]

  def warm(self, max_batch: int) -> None:
    """Compiles every bucket, so that no request waits for a compile (run compiles on first use
    what was not warmed)."""
    self._max_batch = max_batch
    for batch, length in self.buckets(max_batch):
      self._compile(batch, length)

  def _compile(self, batch: int, length: int):
    if (batch, length) not in self._compiled:
      lowered = jax.jit(self.exported.call).lower(self._device_params, *self._inputs([], batch, length))
      self._compiled[batch, length] = lowered.compile()
    return self._compiled[batch, length]

  def _inputs(self, prepared: list, batch: int, length: int) -> list[np.ndarray]:
    """The exported function's inputs for these examples, padded to (batch, length)."""
    pad = self.tokenizer.pad_id if self.tokenizer is not None else 0
    if self.task == 'classify' and 'image' in self.metadata:
      out = np.zeros((batch, *self.metadata['image']['shape']), np.float32)
      for i, p in enumerate(prepared):
        out[i] = p.arrays['inputs']
      return [out]
    if self.task in ('classify', 'generate'):
      tokens = np.full((batch, length), pad, np.int32)
      for i, p in enumerate(prepared):
        tokens[i, :len(p.arrays['inputs'])] = p.arrays['inputs']
      return [tokens]
    if self.task == 'transcribe':
      samples, lengths = np.zeros((batch, length), np.int16), np.zeros((batch,), np.int32)
      for i, p in enumerate(prepared):
        samples[i, :p.length], lengths[i] = p.arrays['inputs'], p.length
      return [samples, lengths]
    tokens, valid = np.full((batch, length), pad, np.int32), np.zeros((batch, length), bool)
    rows = {'temperature': np.zeros(batch, np.float32), 'top_k': np.zeros(batch, np.int32),
            'top_p': np.ones(batch, np.float32), 'seed': np.zeros(batch, np.uint32)}
    for i, p in enumerate(prepared):  # prompts left-padded: every row's continuation starts at the end
      tokens[i, length - p.length:], valid[i, length - p.length:] = p.arrays['tokens'], True
      for name, values in rows.items():
        values[i] = p.options[name]
    return [tokens, valid, *rows.values()]

  def run(self, prepared: list[Prepared]) -> list[dict]:
    """One call per group of similar lengths (see _groups), each padded to the smallest bucket that
    holds it; one result per example, in order."""
    most = self._max_batch or 1 << (len(prepared) - 1).bit_length()
    if len(prepared) > most:
      raise ValueError(f'{len(prepared)} examples in one run; warm(max_batch) allows {most}')
    results = [None] * len(prepared)
    for group in self._groups(prepared, most):
      examples = [prepared[i] for i in group]
      batch = _fit(_batch_buckets(most), len(examples))
      length = _fit(self._lengths(), max(p.length for p in examples))
      compiled = self._compile(batch, length)
      outputs = jax.device_get(compiled(self._device_params, *self._inputs(examples, batch, length)))
      for row, (i, p) in enumerate(zip(group, examples)):
        results[i] = self._result(outputs, row, p)
    return results

  def _groups(self, prepared: list[Prepared], most: int) -> list[list[int]]:
    """The examples' indices cut into groups by length where that is cheaper: one long text would
    otherwise pad a whole batch of short ones to its length. A classifier's or a speech model's cost
    grows with its padded input, taken as (batch + CALL_ROWS) x length per call; a decoder's is its
    loop over new tokens, run once per call, so a continuation or a translation stays one call."""
    order = sorted(range(len(prepared)), key=lambda i: prepared[i].length)
    if self.task not in ('classify', 'transcribe'):
      return [order]
    lengths, batches = self._lengths(), _batch_buckets(most)
    bucket = {i: _fit(lengths, prepared[i].length) for i in order}
    by_length = [[i for i in order if bucket[i] == n] for n in sorted(set(bucket.values()))]
    best = None
    for cuts in range(1 << (len(by_length) - 1)):  # each boundary between lengths cut or not: a few lengths
      groups, group = [], []
      for k, same in enumerate(by_length):
        group = group + same
        if k == len(by_length) - 1 or cuts >> k & 1:
          groups.append(group)
          group = []
      cost = sum((_fit(batches, len(g)) + CALL_ROWS) * bucket[g[-1]] for g in groups)
      if best is None or (cost, len(groups)) < best[:2]:
        best = (cost, len(groups), groups)
    return best[2]

  def _result(self, outputs, i: int, p: Prepared) -> dict:
    if self.task == 'classify':
      labels = self.metadata['labels']
      probabilities = outputs[i]
      return {'label': labels[int(probabilities.argmax())],
              'probabilities': {name: round(float(q), 6) for name, q in zip(labels, probabilities)}}
    if self.task == 'transcribe':
      frame_ids, frames = outputs
      return {'transcript': self.tokenizer.decode(speech.best_path(frame_ids[i], int(frames[i])))}
    ids = outputs[i][:p.options['max_new_tokens']] if self.task == 'sample' else outputs[i]
    return {'output': pairs.text_of(self.tokenizer, ids)}  # up to EOS: a document (or an output) ended


def load(path: str) -> Export:
  """The export in folder path. FileNotFoundError if it is not one."""
  if not os.path.isfile(os.path.join(path, 'metadata.json')):
    raise FileNotFoundError(f'{path} is not a bigjax export (no metadata.json): run python -m bigjax.export')
  return Export(path)
