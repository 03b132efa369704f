"""Speech recognition with CTC (Graves et al. 2006): a batch is bigjax/data/speech.py's {'inputs':
int16 samples, 'input_length', 'labels': token ids padded with 0, 'label_length'}; the model returns
per-frame logits over the tokens and which frames are real, `(logits, valid)`. Token 0 (the pad id,
never in a transcript) is the blank.

The loss is optax.ctc_loss per utterance, summed over the batch and divided by its label tokens.
An utterance with more labels than frames has no alignment; it counts for nothing (and is counted).
Eval decodes the first task.eval_generate_examples utterances (test: all): greedily (best path:
each frame's argmax, repeats merged, blanks dropped) or, with task.beam_size > 1, by prefix beam
search, on the host. WER and CER come from jiwer.
"""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigjax import metrics
from bigjax.config import ConfigError, check
from bigjax.data.speech import BLANK, best_path  # noqa: F401 (ctc.best_path: the greedy decoding)

FIELDS = ('beam_size', 'eval_generate_examples')


def check_config(task_config) -> None:
  for field in FIELDS:
    if field not in task_config:
      raise ConfigError(f'config.task.{field} is missing: the ctc task needs {", ".join(FIELDS)}')
  check(task_config.beam_size >= 1, 'task.beam_size', task_config.beam_size, 'use 1 (greedy) or more')
  check(task_config.eval_generate_examples >= 0, 'task.eval_generate_examples',
        task_config.eval_generate_examples, 'use 0 (all) or a number of utterances')


def prefix_beam_search(log_probs, length: int, width: int) -> list[int]:
  """The most probable labelling of the first `length` frames of (T, V) log-probabilities, by CTC
  prefix beam search (Hannun et al. 2014) without a language model. No pinned library does this
  with numpy 2 (pyctcdecode needs numpy < 2)."""
  add = np.logaddexp
  beams = {(): (0.0, -math.inf)}  # prefix -> (log p of ending in a blank, of ending in its last label)
  for frame in np.asarray(log_probs[:length], np.float64):
    candidates = [int(c) for c in np.argsort(frame)[::-1][:width + 1] if c != BLANK]
    grown = collections.defaultdict(lambda: (-math.inf, -math.inf))
    for prefix, (blank, label) in beams.items():
      total = add(blank, label)
      b, n = grown[prefix]
      grown[prefix] = (add(b, total + frame[BLANK]), n)
      for c in candidates:
        longer = prefix + (c,)
        b, n = grown[longer]
        if prefix and c == prefix[-1]:  # a repeat is a new label only after a blank
          grown[longer] = (b, add(n, blank + frame[c]))
          b, n = grown[prefix]
          grown[prefix] = (b, add(n, label + frame[c]))
        else:
          grown[longer] = (b, add(n, total + frame[c]))
    beams = dict(sorted(grown.items(), key=lambda kv: -add(*kv[1]))[:width])
  return list(max(beams.items(), key=lambda kv: add(*kv[1]))[0])


def transcripts(tokenizer, outputs, beam_size: int) -> list[str]:
  """generate's outputs for one batch -> each utterance's text."""
  frames, lengths = outputs
  decode = best_path if beam_size == 1 else lambda f, n: prefix_beam_search(f, n, beam_size)
  return [tokenizer.decode(decode(f, int(n))) for f, n in zip(frames, lengths)]


def make(task_config, dataset):
  tokenizer, beam_size = dataset.tokenizer, task_config.beam_size

  def model_inputs(batch):
    return {'inputs': batch['inputs'], 'lengths': batch['input_length']}

  def per_utterance(outputs, batch):
    logits, valid = outputs
    labels = batch['labels']
    label_paddings = (jnp.arange(labels.shape[1]) >= batch['label_length'][:, None]).astype(jnp.float32)
    losses = optax.ctc_loss(logits.astype(jnp.float32), 1.0 - valid.astype(jnp.float32), labels,
                            label_paddings, blank_id=BLANK)
    # An alignment needs a frame per label and a blank between repeats.
    repeats = ((labels[:, 1:] == labels[:, :-1]) & (label_paddings[:, 1:] == 0)).sum(-1)
    aligned = (batch['label_length'] + repeats <= valid.sum(-1)).astype(jnp.float32)
    return losses, aligned, batch['label_length'].astype(jnp.float32)

  def loss(outputs, batch):
    losses, aligned, tokens = per_utterance(outputs, batch)
    value = (jnp.where(aligned > 0, losses, 0.0)).sum() / jnp.maximum((aligned * tokens).sum(), 1.0)
    return value, {'loss': value, 'unaligned': (1.0 - aligned).sum()}

  def eval_sums(outputs, batch):
    losses, aligned, tokens = per_utterance(outputs, batch)
    weights = aligned * batch['mask']
    return {'loss_sum': jnp.where(weights > 0, losses, 0.0).sum(), 'tokens': (weights * tokens).sum(),
            'unaligned': ((1.0 - aligned) * batch['mask']).sum()}

  def summarize(sums):
    return {'loss': float(sums['loss_sum']) / max(float(sums['tokens']), 1.0),
            'unaligned': int(sums['unaligned'])}

  def generate(model, variables, batch):
    logits, valid = model.apply(variables, **model_inputs(batch), train=False)
    frames = valid.sum(-1).astype(jnp.int32)
    if beam_size == 1:
      return jnp.argmax(logits, -1).astype(jnp.int32), frames
    return jax.nn.log_softmax(logits.astype(jnp.float32)), frames

  def score(batches, outputs):
    references, texts = [], []
    for batch, out in zip(batches, outputs):
      for i, text in enumerate(transcripts(tokenizer, out, beam_size)):
        if batch['mask'][i]:
          labels = batch['labels'][i, :batch['label_length'][i]]
          references.append(tokenizer.decode([int(t) for t in labels]))
          texts.append(text)
    examples = [{'reference': r, 'output': o} for r, o in list(zip(references, texts))[:3]]
    return {**metrics.speech_scores(texts, references), 'generated': len(texts)}, examples

  def distill_logits(outputs, batch):  # the frame posteriors, over the real frames
    logits, valid = outputs
    return logits, valid.astype(jnp.float32)

  return dict(loss=loss, eval_sums=eval_sums, summarize=summarize, units=('utterances', 1),
              model_inputs=model_inputs, generate=generate, score=score, distill_logits=distill_logits)
