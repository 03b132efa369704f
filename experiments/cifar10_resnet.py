"""ResNet-20 with BatchNorm on TFDS CIFAR-10 (45,000 train / 5,000 validation / 10,000 test), with the
standard augmentation: 4 pixels of padding, a random 32x32 crop, random horizontal flips.

Needs CIFAR-10 prepared as ArrayRecord once, on a machine with network:
  tfds build cifar10 --file_format=array_record --data_dir=DIR

  python -m bigjax.main --config=experiments/cifar10_resnet.py --config.data.data_dir=DIR
  python -m bigjax.main --config=experiments/cifar10_resnet.py --config.data.data_dir=DIR \
      --config.model.stage_sizes='(9, 9, 9)' --config.task.cutmix=1.0   # ResNet-56 with cutmix

Not run here (no network to fetch CIFAR-10, and 2 CPU cores); tests run the same code on
tfds.testing.mock_data, including a run killed and resumed mid-way that ends bitwise equal to an
unbroken one. Targets from the literature, to confirm, not measured claims: ResNet-20 with this
augmentation about 91-92% test accuracy (He et al. 2016: 91.25%); 93-95% takes more depth
(ResNet-56: 93.0%, ResNet-110: 93.6%) or cutmix/mixup on top (about +1%).
"""

from bigjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'cifar10'
  config.model.name = 'resnet'
  config.model.stage_sizes = (3, 3, 3)  # ResNet-20 (He et al., 2016, section 4.2)
  config.model.width = 16
  config.data.augment.crop = 'pad'
  config.data.augment.pad = 4
  config.data.augment.flip = True
  config.optim.name = 'nesterov'
  config.optim.lr = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4  # coupled L2 for SGD-family optimizers
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 500
  config.train.steps = 30000  # about 85 epochs at batch 128
  config.train.batch_size = 128
  config.train.eval_every = 2000
  config.checkpoint.every = 2000
  return config
