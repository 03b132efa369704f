"""TF-IDF + logistic regression (scikit-learn): the bar a text classifier must clear.

  python benchmarks/tfidf_baseline.py                            # python_stdlib_snippets, offline
  python benchmarks/tfidf_baseline.py --dataset=imdb_reviews --data_dir=DIR

Reads the same train / validation / test splits as `python -m bigjax.main` (bigjax.data), fits
TF-IDF features (sublinear term frequency) on train, and picks by validation F1 among: words as
scikit-learn splits them or as bigjax's word tokenizer does (which also splits snake_case and
camelCase names), unigrams or uni+bigrams, and logistic regression's inverse regularization C.
Then it scores the chosen model once on test. Prints one line per candidate and, last,
JSON with the test figures under the keys bigjax writes to metrics.jsonl (`f1`: binary for two
classes, macro otherwise; `f1_macro`).
"""

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from bigjax import data  # noqa: E402
from bigjax.config import base_config  # noqa: E402
from bigjax.data.tokenizers import WordTokenizer  # noqa: E402

WORDS = {
    'sklearn': {},  # (?u)\b\w\w+\b, lowercased
    'bigjax': {'tokenizer': WordTokenizer.split, 'lowercase': False, 'token_pattern': None},
}
NGRAMS = ((1, 1), (1, 2))
C_VALUES = (10.0, 100.0)


def select(splits: dict, average: str) -> tuple:
  """Fits every candidate on train and keeps the best by validation F1 (one line per candidate).

  Returns (validation f1, words, ngrams, C, fitted vectorizer, fitted model).
  """
  best = None
  for words, ngrams in itertools.product(WORDS, NGRAMS):
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=ngrams, min_df=2 if ngrams[1] > 1 else 1,
                                 **WORDS[words])
    features = vectorizer.fit_transform(splits['train'][0])
    eval_features = vectorizer.transform(splits['eval'][0])
    for c in C_VALUES:
      start = time.time()
      model = LogisticRegression(C=c, max_iter=3000).fit(features, splits['train'][1])
      f1 = f1_score(splits['eval'][1], model.predict(eval_features), average=average)
      print(f'words {words} ngrams {ngrams} C {c:g}: validation f1 {f1:.4f} ({time.time() - start:.0f} s)',
            flush=True)
      if best is None or f1 > best[0]:
        best = (f1, words, ngrams, c, vectorizer, model)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='python_stdlib_snippets', choices=[
      n for n, s in data.DATASETS.items() if s.label_feature])
  parser.add_argument('--data_dir', default=None, help='TFDS data dir (default: TFDS\'s own)')
  args = parser.parse_args()
  config = base_config().data
  config.name, config.data_dir = args.dataset, args.data_dir
  splits = data.labelled_texts(config)
  average = 'binary' if data.DATASETS[args.dataset].num_classes == 2 else 'macro'
  print(f'{args.dataset}: ' + ', '.join(f'{k} {len(v[1])}' for k, v in splits.items()), flush=True)
  f1_eval, words, ngrams, c, vectorizer, model = select(splits, average)
  labels = splits['test'][1]
  predicted = model.predict(vectorizer.transform(splits['test'][0]))
  print(json.dumps({
      'dataset': args.dataset, 'split': 'test', 'words': words, 'ngram_range': list(ngrams), 'C': c,
      'eval_f1': round(f1_eval, 4),
      'accuracy': round(accuracy_score(labels, predicted), 4),
      'f1': round(f1_score(labels, predicted, average=average), 4),
      'f1_macro': round(f1_score(labels, predicted, average='macro'), 4),
  }))


if __name__ == '__main__':
  main()
