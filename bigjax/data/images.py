"""Image transforms on the host, in numpy and PIL: train augmentation, the eval crop, normalization.

Train augmentation draws every random choice from a numpy Generator seeded by
(seed, step, row), where row is the example's row in the step's global batch. So the
augmentation of an example depends on nothing but those three numbers: a resumed run
augments exactly as an uninterrupted one, on any number of hosts and worker processes.

- random_resized: a crop covering a random share of the image's area (crop_scale) with
  a random aspect ratio in [3/4, 4/3], resized to image_size (Szegedy et al., 2015; the
  torchvision algorithm: 10 tries, then the largest central crop of an allowed ratio).
- pad: `pad` zero pixels on each side, then a random crop of the original size (the
  CIFAR standard, He et al., 2016).
- flip: a horizontal flip with probability 1/2.

Eval (and train without a crop to image_size): the central 87.5% of the shorter side,
resized to image_size, the usual ImageNet eval transform. Resizes are PIL's bilinear
filter, which widens its support when it shrinks (antialiased).

Images are uint8 (H, W, C). A batch holds them stacked (B, H, W, C) when all have one size,
or as a list when they vary (ImageNet, Pascal VOC).
"""

import functools
import math

import numpy as np
from PIL import Image

from bigjax.config import check, check_choice

CROPS = ('none', 'random_resized', 'pad')
EVAL_CROP_FRACTION = 0.875  # 224 of 256: the central crop every ImageNet paper evaluates on
_RATIO = (math.log(3 / 4), math.log(4 / 3))


def rng(seed: int, step: int, row: int) -> np.random.Generator:
  """The generator of one example's augmentation: a function of (seed, step, global row) alone."""
  return np.random.default_rng((seed, step, row))


def resize(image: np.ndarray, size: tuple[int, int], box: tuple | None = None) -> np.ndarray:
  """The (left, top, right, bottom) box of image (all of it by default), resized to size (h, w)."""
  h, w = size
  if box is None and image.shape[:2] == (h, w):
    return image
  gray = image.shape[-1] == 1  # PIL reads a 2-D array as a one-channel image
  out = Image.fromarray(image[..., 0] if gray else image).resize((w, h), Image.Resampling.BILINEAR, box=box)
  out = np.asarray(out)
  return out[..., None] if gray else out


def random_resized_box(height: int, width: int, generator, scale: tuple[float, float]) -> tuple:
  """(left, top, right, bottom) of an Inception-style random crop of a height x width image."""
  area = height * width
  for _ in range(10):
    target = area * generator.uniform(scale[0], scale[1])
    ratio = math.exp(generator.uniform(*_RATIO))
    w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
      top, left = int(generator.integers(0, height - h + 1)), int(generator.integers(0, width - w + 1))
      return left, top, left + w, top + h
  # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
  ratio = width / height
  if ratio < 3 / 4:
    w, h = width, round(width / (3 / 4))
  elif ratio > 4 / 3:
    w, h = round(height * 4 / 3), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def random_resized_crop(image, generator, size: int, scale: tuple[float, float]) -> np.ndarray:
  box = random_resized_box(image.shape[0], image.shape[1], generator, scale)
  return resize(image, (size, size), box)


def pad_crop(image, generator, pad: int) -> np.ndarray:
  """A random crop of the image's own size from the image padded with `pad` zeros on each side."""
  h, w = image.shape[:2]
  top, left = int(generator.integers(0, 2 * pad + 1)), int(generator.integers(0, 2 * pad + 1))
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return padded[top:top + h, left:left + w]


def center_crop(image, size: int, fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """The central square of `fraction` of the shorter side, resized to size x size."""
  h, w = image.shape[:2]
  side = max(1, round(min(h, w) * fraction))
  top, left = (h - side) // 2, (w - side) // 2
  return resize(image, (size, size), (left, top, left + side, top + side))


def augment_one(image, generator, *, crop: str, image_size: int, crop_scale, pad: int, flip: bool):
  """One image's train augmentation; the draws come in a fixed order: crop, then flip."""
  if crop == 'random_resized':
    image = random_resized_crop(image, generator, image_size or image.shape[0], crop_scale)
  elif crop == 'pad':
    image = pad_crop(image, generator, pad)
  if flip and generator.random() < 0.5:
    image = image[:, ::-1]
  return np.ascontiguousarray(image)


def augment(batch: dict, seed: int, step: int, rows, **options) -> dict:
  """The batch's images augmented, example by example, each with rng(seed, step, its global row).

  options: augment_one's. Images come back stacked when they were, or when the crop gives
  them one size (random_resized); otherwise (pad or flip of images of varied sizes) as a list.
  """
  images = [augment_one(image, rng(seed, step, int(row)), **options)
            for image, row in zip(batch['image'], rows, strict=True)]
  same_size = isinstance(batch['image'], np.ndarray) or options['crop'] == 'random_resized'
  return {**batch, 'image': np.stack(images) if same_size else images}


def eval_crop(images, image_size: int):
  """Stacked images of image_size (0: as they are), each centre-cropped and resized unless it
  already has that size and came stacked (a fixed-size dataset, or a train batch already cropped)."""
  if isinstance(images, np.ndarray) and (not image_size or images.shape[1:3] == (image_size, image_size)):
    return images
  return np.stack([center_crop(image, image_size) for image in images])


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 images -> float32 (x / 255 - mean) / std, per channel (mean and std in 0..1 units)."""
  scale = np.float32(1 / 255) / np.asarray(std, np.float32)
  shift = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  out = images.astype(np.float32)
  # Rows of W x C values, each scaled by the channel pattern tiled W times: numpy's inner loop then runs
  # over a whole row instead of C values, several times faster.
  rows = out.reshape(-1, out.shape[-2] * out.shape[-1])
  rows *= np.tile(scale, out.shape[-2])
  rows -= np.tile(shift, out.shape[-2])
  return out


# What a dataset of images gives the trainer: its batches as model inputs, its transforms, its checks.

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VOC_CLASSES = 20


def to_inputs(batch: dict, mean=(0.5,), std=(0.25,), image_size: int = 0) -> dict:
  """uint8 images (B, H, W, C, or a list of (H, W, C)) -> float32 inputs (x / 255 - mean) / std,
  each cut to image_size (0: as stored) by the eval transform unless it already has that size;
  labels as int32 (classes) or float32 (multi-hot). The default mean and std, which map 0..255
  to -2..2, are for datasets that state none."""
  label = batch['label']
  label = label.astype(np.int32) if np.issubdtype(label.dtype, np.integer) else label.astype(np.float32)
  return {'inputs': normalize(eval_crop(batch['image'], image_size), mean, std), 'label': label}


def multi_hot_to_inputs(batch: dict, **options) -> dict:
  """to_inputs for multi-label data stored as 0/1 integers: 'label' becomes a float32 multi-hot vector."""
  return {**to_inputs(batch, **options), 'label': batch['label'].astype(np.float32)}


def image_and_label(example: dict) -> dict:
  return {'image': example['image'], 'label': example['label']}


def voc_record(example: dict) -> dict:
  """Pascal VOC: the image and the multi-hot of the classes of its objects (difficult ones too)."""
  label = np.zeros(VOC_CLASSES, np.float32)
  label[np.asarray(example['labels'], np.int64)] = 1.0
  return {'image': example['image'], 'label': label}


def transforms(spec, data_config) -> tuple:
  """(preprocess, augment or None) of a dataset (a data.DatasetSpec): its normalization and eval crop;
  the train augmentation that data.augment asks for."""
  options = data_config.get('augment', {})
  image_size = options.get('image_size', 0)
  preprocess = spec.preprocess
  if spec.image_shape:
    stats = {'mean': spec.mean, 'std': spec.std} if spec.mean is not None else {}  # else the default
    preprocess = functools.partial(spec.preprocess, image_size=image_size, **stats)
  crop, flip = options.get('crop', 'none'), options.get('flip', False)
  if crop == 'none' and not flip:
    return preprocess, None
  return preprocess, functools.partial(augment, crop=crop, image_size=image_size,
                                       crop_scale=tuple(options.crop_scale), pad=options.pad, flip=flip)


def check_config(spec, data_config) -> None:
  """Reading and augmentation: sizes an image dataset can have, augmentation only on images."""
  workers, prefetch = data_config.get('workers', 0), data_config.get('prefetch', 2)
  check(workers >= 0, 'data.workers', workers, 'use 0 (read in this process) or a number of worker processes')
  check(prefetch >= 1, 'data.prefetch', prefetch, 'use 1 or more batches')
  if 'augment' not in data_config:
    return
  a = data_config.augment
  check_choice(a, 'data.augment', 'crop', CROPS)
  if not spec.image_shape:
    for field, off in (('crop', 'none'), ('flip', False)):
      check(a[field] == off, f'data.augment.{field}', a[field],
            f'{data_config.name!r} has no images: use {off!r}')
    return
  check(a.image_size >= 0, 'data.augment.image_size', a.image_size, 'use a size in pixels, or 0 (as stored)')
  if None in spec.image_shape:
    check(a.image_size > 0, 'data.augment.image_size', a.image_size,
          f'{data_config.name!r} has images of varied sizes: give the size to crop them to, e.g. 224')
  scale = tuple(a.crop_scale)
  check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, 'data.augment.crop_scale', scale,
        'use (low, high) with 0 < low <= high <= 1: shares of the image area, e.g. (0.08, 1.0)')
  check(a.pad >= 0 and (a.crop != 'pad' or a.pad > 0), 'data.augment.pad', a.pad,
        'use a number of pixels > 0 for crop=pad')
  if spec.large:
    check(not data_config.in_memory, 'data.in_memory', data_config.in_memory,
          f'{data_config.name!r} does not fit in host memory: use --config.data.in_memory=False')
