"""Retrieval (translation) and lead (summarization): the figures a sequence-to-sequence model must beat.

  python benchmarks/seq2seq_baselines.py --config=experiments/translate.py:offline
  python benchmarks/seq2seq_baselines.py --config=experiments/summarize.py:offline [--split=eval]

Reads the config's dataset through bigjax.data.pair_texts, so it scores the same texts as the
trainer (decoded from token ids) with the same metrics (bigjax.metrics), on the test split.

- Translation, retrieval: TF-IDF over the train sources (word unigrams and bigrams, sublinear
  term frequency); each query gets the target of its nearest train source by cosine similarity.
  On package descriptions this is a strong bar: descriptions of one family repeat phrases.
- Summarization, lead: the description's first sentence (the text before the first '. ' or
  newline, whichever comes first), cut to the median synopsis length in words over train.

The config's task.metrics ('translation' or 'summary') picks the baseline. Prints one JSON line:
task, baseline, split, examples and the metrics.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402

_CHUNK = 1024  # queries per similarity product: bounds the dense (chunk x train) matrix


def retrieval(train_sources, train_targets, queries) -> list[str]:
  """For each query, the train target whose source is nearest in TF-IDF cosine similarity."""
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
  train = vectorizer.fit_transform(train_sources)  # rows are L2-normalized: a dot product is the cosine
  out = []
  for start in range(0, len(queries), _CHUNK):
    similarity = (vectorizer.transform(queries[start:start + _CHUNK]) @ train.T).toarray()
    out += [train_targets[i] for i in np.argmax(similarity, axis=1)]  # ties and no overlap: the first
  return out


def _first_sentence(text: str) -> str:
  return text.split('\n', 1)[0].split('. ', 1)[0]


def lead(descriptions, words: int) -> list[str]:
  """Each description's first sentence, cut to its first `words` words."""
  return [' '.join(_first_sentence(d).split()[:words]) for d in descriptions]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='FILE[:ARG], as for python -m bigjax.main')
  parser.add_argument('--split', default='test', choices=['eval', 'test'], help='eval: TFDS\'s validation')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir (default: the config\'s)')
  args = parser.parse_args()

  from bigjax import data, metrics
  from bigjax.main import _load_config_file
  config = _load_config_file(args.config)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  texts = data.pair_texts(config.data)
  train_sources, train_targets = texts['train']
  sources, references = texts[args.split]
  if config.task.metrics == 'summary':  # the seq2seq task's scorer: 'translation' or 'summary'
    words = round(statistics.median(len(t.split()) for t in train_targets))
    task, baseline = 'summarization', 'lead'
    scores = metrics.summary_scores(lead(sources, words), references)
  else:
    task, baseline = 'translation', 'retrieval'
    scores = metrics.translation_scores(retrieval(train_sources, train_targets, sources), references)
  print(json.dumps({'task': task, 'baseline': baseline, 'split': args.split, 'examples': len(sources),
                    **{k: round(float(v), 4) for k, v in scores.items()}}))


if __name__ == '__main__':
  main()
