"""LeNet-style CNN on TFDS MNIST (55,000 train / 5,000 validation / 10,000 test).

Needs MNIST prepared as ArrayRecord once, on a machine with network:
  tfds build mnist --file_format=array_record --data_dir=DIR

  python -m bigjax.main --config=experiments/mnist_cnn.py --config.data.data_dir=DIR

Not yet run here (this machine has no network to fetch MNIST); tests run the
same code on tfds.testing.mock_data. This model class reaches about 99.2% test
accuracy: a target to confirm, not a measured claim.
"""

from bigjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'mnist'
  config.model.name = 'lenet'
  config.model.features = (32, 64)  # 28x28 -> 14x14 -> 7x7
  config.model.hidden = 256
  config.model.dropout = 0.25
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = 'cosine'
  config.train.steps = 4000  # about 9 epochs at batch 128
  config.train.batch_size = 128
  config.train.eval_every = 1000
  config.checkpoint.every = 1000
  return config
