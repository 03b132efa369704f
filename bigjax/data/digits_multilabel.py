"""`digits_multilabel`: 2 to 4 of scikit-learn's 8x8 digits on a 16x16 canvas, labelled by which
digits appear: multi-label classification (as Pascal VOC's 20 object classes) that learns offline.

Each canvas is a 2x2 grid of 8x8 cells; 2-4 cells hold a digit, the rest stay black. The label is a
multi-hot vector over the ten digits (a digit drawn twice counts once). Canvases of a split are built
only from that split's digits (the `digits` dataset's fixed split), so no test digit is ever seen in
training. The composition is seeded: every machine builds the same dataset.
"""

import numpy as np
import tensorflow_datasets as tfds

from bigjax.data import digits

SIZES = {'train': 6000, 'validation': 600, 'test': 1200}  # canvases per split
CELLS = 2  # the canvas is CELLS x CELLS digits


def compose(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator):
  """n canvases (n, 16, 16, 1) uint8 and their multi-hot labels (n, 10) uint8."""
  size = images.shape[1]
  canvases = np.zeros((n, CELLS * size, CELLS * size, 1), np.uint8)
  multi_hot = np.zeros((n, 10), np.uint8)
  for i in range(n):
    count = rng.integers(2, CELLS * CELLS + 1)
    cells = rng.choice(CELLS * CELLS, count, replace=False)
    for cell, j in zip(cells, rng.integers(0, len(images), count)):
      row, col = divmod(int(cell), CELLS)
      canvases[i, row * size:(row + 1) * size, col * size:(col + 1) * size] = images[j]
      multi_hot[i, labels[j]] = 1
  return canvases, multi_hot


class DigitsMultilabel(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '2-4 digits on a 2x2 grid; 6000/600/1200 canvases.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(16, 16, 1), dtype=np.uint8),
            'label': tfds.features.Tensor(shape=(10,), dtype=np.uint8),  # multi-hot over the ten digits
        }),
        disable_shuffling=True,  # record i is canvas i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the digits are scikit-learn's
    images, labels = digits.load_images()
    return {name: self._generate_examples(*compose(images[rows], labels[rows], SIZES[name],
                                                   np.random.default_rng(seed)))
            for seed, (name, rows) in enumerate(digits.split_rows(len(labels)).items())}

  def _generate_examples(self, canvases, multi_hot):
    for i, (image, label) in enumerate(zip(canvases, multi_hot)):
      yield i, {'image': image, 'label': label}
