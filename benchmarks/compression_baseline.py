"""Bits per byte that gzip -9, bz2 -9 and xz -9 reach on an LM dataset's split: the bar a
language model's `bits_per_byte` is measured against (README, "Language models").

  python benchmarks/compression_baseline.py [--dataset python_stdlib] [--split validation] [--data_dir DIR]

The text is the split's documents concatenated, exactly the bytes the `lm` task's
bits_per_byte counts (the EOS between documents stands for no bytes).
"""

import argparse
import bz2
import gzip
import json
import lzma
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigjax import data  # noqa: E402
from bigjax.config import base_config  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--dataset', default='python_stdlib')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  config = base_config().data
  config.name, config.data_dir = args.dataset, args.data_dir
  spec = data.DATASETS[args.dataset]
  if spec.builder is not None:
    data._prepare_offline(spec, args.data_dir)  # offline corpora are built on first use
  import tensorflow_datasets as tfds  # noqa: PLC0415
  source = tfds.data_source(spec.tfds_name, split=args.split, data_dir=args.data_dir)
  text = ''.join(data._texts(source, spec.text_feature)).encode('utf-8')
  bits = {name: 8 * len(compress(text)) / len(text) for name, compress in (
      ('gzip_9', lambda t: gzip.compress(t, 9)), ('bz2_9', lambda t: bz2.compress(t, 9)),
      ('xz_9', lambda t: lzma.compress(t, preset=9)))}
  print(json.dumps({'dataset': args.dataset, 'split': args.split, 'bytes': len(text),
                    **{f'{k}_bits_per_byte': round(v, 4) for k, v in bits.items()}}))


if __name__ == '__main__':
  main()
