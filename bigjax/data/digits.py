"""`digits`: scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset (ArrayRecord).

1,797 images from the UCI ML hand-written digits set ship inside scikit-learn,
so this works with no network. The split is fixed (the same permutation on
every machine): 1,257 train, 180 validation, 360 test.
"""

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SIZES = {'test': 360, 'validation': 180}  # the rest is train


def load_images() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as (1797, 8, 8, 1) uint8 images and their labels."""
  from sklearn.datasets import load_digits  # noqa: PLC0415 (only needed once, to prepare)
  images, labels = load_digits(return_X_y=True)
  # Pixel values are 0..16; scale to the usual 0..255 of uint8 images.
  return np.round(images.reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8), labels


def split_rows(n: int) -> dict:
  """TFDS split name -> the rows of the n digits it holds: the same permutation on every machine."""
  order = np.random.RandomState(0).permutation(n)  # legacy RNG: stable across numpy versions
  test, validation = np.split(order, np.cumsum(list(SPLIT_SIZES.values())))[:2]
  return {'train': order[sum(SPLIT_SIZES.values()):], 'validation': validation, 'test': test}


class Digits(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'scikit-learn load_digits, fixed 1257/180/360 split.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # Tensor, not Image: Image encodes PNG through TensorFlow.
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # record i is row i: the split never depends on TFDS's hashing
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    images, labels = load_images()
    return {name: self._generate_examples(images[rows], labels[rows])
            for name, rows in split_rows(len(labels)).items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}
