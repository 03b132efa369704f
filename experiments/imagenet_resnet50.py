"""ResNet-50 on ImageNet-1k (TFDS imagenet2012, a manual download), the recipe of Goyal et al. (2017).

Needs imagenet2012 prepared as ArrayRecord once (TFDS needs the two tar files in its manual dir):
  tfds build imagenet2012 --file_format=array_record --data_dir=DIR --manual_dir=TARS

  python -m bigjax.main --config=experiments/imagenet_resnet50.py --config.data.data_dir=DIR \
      --config.data.workers=16 --workdir=gs://BUCKET/runs/resnet50

What the literature reports: about 76% top-1 (93% top-5) on the validation set after 90 epochs
(He et al. 2016: 75.3%; Goyal et al. 2017: 76.3% at batch 8k; torchvision's v1.5 weights: 76.1%).
Not run here: no ImageNet and 2 CPU cores. Tests run the same code on tfds.testing.mock_data, and
--dry_run compiles its train step (sizes and what fits on which TPU slice: README).

The recipe: SGD with Nesterov momentum 0.9, batch 1024, learning rate 0.1 per 256 images with 5
warmup epochs then cosine, L2 1e-4, label smoothing 0.1, random-resized crops of 224 and flips, the
last BatchNorm of each block starting at zero. Eval: resize, then the centre 224 crop.
"""

from bigjax.config import base_config

TRAIN_IMAGES = 1_281_167 - 12_811  # imagenet2012's train split less the 1% held out for eval
BATCH = 1024


def get_config():
  c = base_config()
  c.data.name = 'imagenet2012'
  c.data.in_memory = False  # about 150 GB of JPEGs: read per batch
  c.data.workers = 16  # JPEG decoding and crops in grain worker processes (CPU-bound)
  c.data.augment.crop = 'random_resized'
  c.data.augment.image_size = 224
  c.data.augment.flip = True
  c.task.label_smoothing = 0.1
  c.model.name = 'resnet'
  c.model.stem = 'imagenet'
  c.model.block = 'bottleneck'
  c.model.stage_sizes = (3, 4, 6, 3)
  c.model.width = 64
  c.optim.name = 'nesterov'
  c.optim.momentum = 0.9
  c.optim.lr = 0.1 * BATCH / 256
  c.optim.weight_decay = 1e-4  # coupled L2, as in the paper
  c.optim.schedule = 'cosine'
  steps_per_epoch = TRAIN_IMAGES // BATCH
  c.optim.warmup_steps = 5 * steps_per_epoch
  c.train.steps = 90 * steps_per_epoch
  c.train.batch_size = BATCH
  c.train.eval_every = 5 * steps_per_epoch
  c.train.log_every = 500
  c.checkpoint.every = 2500
  return c
