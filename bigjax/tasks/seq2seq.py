"""Sequence to sequence (translation, summarization): a batch is {'inputs': source ids,
'decoder_inputs': the target shifted right, 'targets': target ids} (bigjax/data/pairs.py); the
model outputs next-token logits over the target. Padding (the pad id) counts for nothing.

Trained with teacher forcing (cross-entropy per target token, optionally label-smoothed).
Judged by what it generates: at each eval, beam search decodes the first task.eval_generate_examples
examples (0: all; test always decodes all, to compare with baselines on the same split), and the
host scores the text with the field's library: BLEU and chrF (sacrebleu) for `metrics='translation'`,
ROUGE (rouge-score) for `metrics='summary'`.
"""

import math

import jax
import jax.numpy as jnp
import optax
from absl import logging

from bigjax import decode, metrics
from bigjax.config import ConfigError, check, check_choice
from bigjax.cpu.argmax import argmax_equals
from bigjax.data import pairs

SCORERS = {'translation': metrics.translation_scores, 'summary': metrics.summary_scores}


FIELDS = ('metrics', 'label_smoothing', 'beam_size', 'length_penalty', 'eval_generate_examples',
          'max_length_ratio')


def check_config(task_config) -> None:
  for field in FIELDS:
    if field not in task_config:
      raise ConfigError(f'config.task.{field} is missing: the seq2seq task needs {", ".join(FIELDS)}')
  check_choice(task_config, 'task', 'metrics', SCORERS)
  check(0 <= task_config.label_smoothing < 1, 'task.label_smoothing', task_config.label_smoothing,
        'use a value in [0, 1)')
  check(task_config.beam_size >= 1, 'task.beam_size', task_config.beam_size, 'use 1 (greedy) or more')
  check(task_config.length_penalty >= 0, 'task.length_penalty', task_config.length_penalty,
        'use a value >= 0 (0: no length penalty)')
  check(task_config.eval_generate_examples >= 0, 'task.eval_generate_examples',
        task_config.eval_generate_examples, 'use 0 (all) or a number of examples')
  check(task_config.max_length_ratio > 0, 'task.max_length_ratio', task_config.max_length_ratio,
        'use a ratio > 0 of the source length')


def make(task_config, dataset):
  tokenizer = dataset.tokenizer
  pad_id, smoothing = tokenizer.pad_id, task_config.label_smoothing
  scorer = SCORERS[task_config.metrics]
  if task_config.metrics == 'translation':
    logging.info('sacrebleu: %s', metrics.translation_signature())

  def model_inputs(batch):
    return {'inputs': batch['inputs'], 'targets': batch['decoder_inputs']}

  def per_token(logits, batch):
    logits = logits.astype(jnp.float32)
    # optax.softmax_cross_entropy(logits, smooth_labels(one_hot(targets))), from the integer labels
    # (no one-hot over the vocabulary): (1 - smoothing) nll + smoothing * mean over ids of -log p.
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    if smoothing:
      token_loss = (1 - smoothing) * token_loss - smoothing * jax.nn.log_softmax(logits).mean(-1)
    weights = (batch['targets'] != pad_id).astype(jnp.float32)
    correct = argmax_equals(logits, batch['targets']).astype(jnp.float32)  # argmax(-1) == targets, faster
    return token_loss, correct, weights

  def loss(logits, batch):
    token_loss, correct, weights = per_token(logits, batch)
    count = jnp.maximum(weights.sum(), 1.0)
    value = (token_loss * weights).sum() / count
    return value, {'loss': value, 'accuracy': (correct * weights).sum() / count}

  def eval_sums(logits, batch):
    token_loss, correct, weights = per_token(logits, batch)
    weights = weights * batch['mask'][:, None]
    return {'loss_sum': (token_loss * weights).sum(), 'correct': (correct * weights).sum(),
            'tokens': weights.sum()}

  def summarize(sums):
    tokens = max(float(sums['tokens']), 1.0)
    value = float(sums['loss_sum']) / tokens
    return {'loss': value, 'perplexity': math.exp(min(value, 50.0)),
            'accuracy': float(sums['correct']) / tokens}

  # The longest output: the configured target length, never the width of a bucketed batch (which
  # would tell the decoder how long that batch's references are).
  target_len = dataset.preprocess(dataset.splits['train'].read([0]))['targets'].shape[1]

  def generate(model, variables, batch):
    source = batch['inputs']
    # The longest output each source may get: a multiple of its length, plus a few tokens.
    limit = jnp.ceil(task_config.max_length_ratio * (source != pad_id).sum(-1)).astype(jnp.int32) + 10
    return decode.seq2seq_generate(model, variables, source, max_length=target_len,
                                   beam_size=task_config.beam_size, alpha=task_config.length_penalty,
                                   length_limit=limit, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                                   pad_id=pad_id)

  def score(batches, outputs):
    """Corpus metrics of the real rows (mask 1) of the generated batches, and three examples."""
    sources, references, texts = [], [], []
    for batch, ids in zip(batches, outputs):
      for i in range(len(ids)):
        if batch['mask'][i]:
          sources.append(pairs.text_of(tokenizer, batch['inputs'][i]))
          references.append(pairs.text_of(tokenizer, batch['targets'][i]))
          texts.append(pairs.text_of(tokenizer, ids[i]))
    examples = [{'source': s, 'reference': r, 'output': o}
                for s, r, o in list(zip(sources, references, texts))[:3]]
    return {**scorer(texts, references), 'generated': len(texts)}, examples

  def distill_logits(logits, batch):
    return logits, (batch['targets'] != pad_id).astype(jnp.float32)

  return dict(loss=loss, eval_sums=eval_sums, summarize=summarize, units=('target_tokens', target_len),
              model_inputs=model_inputs, generate=generate, score=score, distill_logits=distill_logits)
