"""Language modelling: a batch is {'inputs', 'targets'} token ids (B, T); the model outputs
next-token logits (B, T, vocab). Targets equal to the tokenizer's pad id count for nothing.

Metrics: loss and accuracy per token, perplexity, and bits per byte, which divides the
summed loss (in bits) by the UTF-8 bytes the targets stand for, so tokenizers of
different vocabularies compare on one scale (and against gzip or xz).
"""

import math

import jax
import jax.numpy as jnp
import optax

from bigjax.config import check


def check_config(task_config) -> None:
  check(task_config.get('z_loss', 0.0) >= 0, 'task.z_loss', task_config.get('z_loss'), 'use a value >= 0')


def make(task_config, dataset):
  z_loss = task_config.get('z_loss', 0.0)
  token_bytes = jnp.asarray(dataset.tokenizer.token_bytes, jnp.float32)
  pad_id = dataset.tokenizer.pad_id

  def per_token(logits, batch):
    """Cross-entropy (float32) and correctness per target token, and which tokens count."""
    logits = logits.astype(jnp.float32)
    targets = batch['targets']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weights = (targets != pad_id).astype(jnp.float32)
    return loss, (logits.argmax(-1) == targets).astype(jnp.float32), weights, logits

  def loss(logits, batch):
    token_loss, correct, weights, logits = per_token(logits, batch)
    count = jnp.maximum(weights.sum(), 1.0)
    value = (token_loss * weights).sum() / count
    metrics = {'loss': value, 'accuracy': (correct * weights).sum() / count}
    if z_loss:  # keeps the softmax normalizer near 1 (PaLM): stabler logits in low precision
      z = jax.nn.logsumexp(logits, axis=-1)
      value += z_loss * (jnp.square(z) * weights).sum() / count
    return value, metrics

  def eval_sums(logits, batch):
    token_loss, correct, weights, _ = per_token(logits, batch)
    weights = weights * batch['mask'][:, None]  # padding rows of the eval batch count for nothing
    return {'loss_sum': (token_loss * weights).sum(), 'correct': (correct * weights).sum(),
            'tokens': weights.sum(), 'bytes': (token_bytes[batch['targets']] * weights).sum()}

  def summarize(sums):
    tokens = max(float(sums['tokens']), 1.0)
    loss_value = float(sums['loss_sum']) / tokens
    return {'loss': loss_value, 'perplexity': math.exp(min(loss_value, 50.0)),
            'accuracy': float(sums['correct']) / tokens,
            'bits_per_byte': float(sums['loss_sum']) / math.log(2) / max(float(sums['bytes']), 1.0)}

  def distill_logits(logits, batch):
    return logits, (batch['targets'] != pad_id).astype(jnp.float32)

  seq_len = dataset.preprocess(dataset.splits['train'].read([0]))['targets'].shape[1]
  return dict(loss=loss, eval_sums=eval_sums, summarize=summarize, units=('tokens', seq_len),
              distill_logits=distill_logits)

