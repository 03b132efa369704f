"""Classification metrics, computed from a confusion matrix summed over a whole split.

Summing counts (not averaging per-batch scores) makes eval exact regardless of
batch size or padding, and lets precision/recall/F1 be computed once at the end.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, mask=None):
  """counts[i, j] = number of examples with label i predicted as j (jit-able)."""
  weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
  pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
  return true.T @ pred


def in_top_k(logits, labels, k: int):
  """1.0 where the label is among the k highest logits (ties counted for the label), else 0.0."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  return ((logits > label_logit).sum(axis=-1) < k).astype(jnp.float32)


def _safe_divide(a, b):
  return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def from_confusion(counts) -> dict:
  """accuracy, precision, recall, f1 and their per-class arrays, from confusion counts.

  For two classes `precision`, `recall` and `f1` are binary (class 1 is
  positive), as scikit-learn's default; otherwise they are macro averages.
  The `_macro` keys are always macro averages.
  """
  counts = np.asarray(counts, np.float64)
  tp = np.diag(counts)
  precision = _safe_divide(tp, counts.sum(axis=0))
  recall = _safe_divide(tp, counts.sum(axis=1))
  f1 = _safe_divide(2 * precision * recall, precision + recall)
  out = {
      'accuracy': float(tp.sum() / max(counts.sum(), 1)),
      'precision_macro': float(precision.mean()),
      'recall_macro': float(recall.mean()),
      'f1_macro': float(f1.mean()),
      'per_class_precision': precision,
      'per_class_recall': recall,
      'per_class_f1': f1,
      'confusion_matrix': counts.astype(np.int64),
  }
  positive = 1 if len(tp) == 2 else slice(None)
  for name, values in (('precision', precision), ('recall', recall), ('f1', f1)):
    out[name] = float(np.mean(values[positive]))
  return out


# Generated text, judged corpus-wide by the field's own scorers (never re-implemented here), on
# detokenized text, as papers report them: 0-100.

def _sacrebleu():
  import sacrebleu  # noqa: PLC0415 (only tasks that generate need it)
  return sacrebleu.BLEU(), sacrebleu.CHRF()


def translation_scores(outputs: list[str], references: list[str]) -> dict:
  """Corpus BLEU (sacrebleu's default 13a tokenization) and chrF."""
  bleu, chrf = _sacrebleu()
  return {'bleu': bleu.corpus_score(outputs, [references]).score,
          'chrf': chrf.corpus_score(outputs, [references]).score}


def translation_signature() -> str:
  """sacrebleu's signatures: what makes a BLEU figure comparable with another."""
  bleu, chrf = _sacrebleu()
  for metric in (bleu, chrf):
    metric.corpus_score(['x'], [['x']])  # a signature names the number of references: score once
  return f'BLEU {bleu.get_signature()}; chrF {chrf.get_signature()}'


ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL', 'rougeLsum')


def summary_scores(outputs: list[str], references: list[str]) -> dict:
  """The mean ROUGE F1 over examples (rouge-score, Porter stemming; rougeLsum splits sentences at
  newlines)."""
  from rouge_score import rouge_scorer  # noqa: PLC0415
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  scores = [scorer.score(reference, output) for output, reference in zip(outputs, references)]
  return {name: 100 * float(np.mean([s[name].fmeasure for s in scores])) if scores else 0.0
          for name in ROUGE_TYPES}


def speech_scores(outputs: list[str], references: list[str]) -> dict:
  """Corpus word and character error rates (jiwer): errors over all reference words (characters)."""
  import jiwer  # noqa: PLC0415 (only speech needs it)
  if not references:
    return {'wer': 0.0, 'cer': 0.0}
  # jiwer refuses empty references (an utterance with no words); they are left out.
  keep = [i for i, r in enumerate(references) if r.strip()]
  outputs, references = [outputs[i] for i in keep], [references[i] for i in keep]
  return {'wer': float(jiwer.wer(references, outputs)), 'cer': float(jiwer.cer(references, outputs))}
