"""Images per second of the ImageNet train input pipeline, on 0 (in-process), 1, 2 and N worker processes.

  python benchmarks/input_pipeline.py [--images 256] [--batch 64] [--batches 12] [--workers 0,1,2,N]

It writes its own JPEGs (quality 90) of ImageNet's sizes: width and height drawn around ImageNet
train's means (about 400 x 350 pixels) with its spread, each a smooth random colour field with
grain, edges and noise so that it compresses about as a photo does. They are read as bigjax reads
imagenet2012: TFDS's own image decoder (tfds.features.Image.decode_example_np: PIL, no TensorFlow),
a list of images of varied sizes, data.augment's random-resized 224 x 224 crop and flip, ImageNet
normalization to float32, through pipeline.train_iterator (grain) with `workers` worker processes.
N is os.cpu_count(). The first batch of each run (worker start-up) is not timed.

It also times the parts in this process (decode; crop, resize and flip; normalize) and compares
the rates with what one accelerator consumes when training ResNet-50 or ViT-B/16 at 224 x 224:
peak bf16 FLOP/s x MFU / (3 x forward FLOPs per image), a train step being about 3 forward passes.
From the rate of one worker it says how many of this machine's cores would feed one chip.

The last stdout line is JSON: {"machine", "load", "jpeg_kb", "images_per_s": {workers: rate},
"per_image_ms": {part: ms}, "chips": {chip: {model: images/s}}, "cores_per_chip": {...}}.
"""

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import data  # noqa: E402
from bigjax.data import images, pipeline  # noqa: E402

SIZE = 224
# Forward FLOPs per 224 x 224 image, two per multiply-add: the papers' "4.1 GFLOPs" (ResNet-50) and
# "17.6 GFLOPs" (ViT-B/16) count multiply-adds. XLA counts 24 GFLOPs per ResNet-50 train image (3 x 8).
FORWARD_GFLOPS = {'resnet50': 8.2, 'vit_b16': 35.1}
PEAK_TFLOPS = {'tpu_v5e': 197.0, 'h100_sxm': 989.0}  # dense bf16
MFU = 0.5  # assumed: a well-tuned step on either chip


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
  """n JPEGs of ImageNet-like sizes and content statistics (quality 90)."""
  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(n):
    w = int(np.clip(rng.normal(400, 110), 120, 1000))
    h = int(np.clip(rng.normal(350, 90), 100, 1000))
    coarse = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    texture = rng.integers(0, 256, (h, w, 1)).astype(np.float32)  # fine grain in brightness
    pixels = field * 0.5 + texture * 0.5 + rng.normal(0, 20, (h, w, 3))
    for _ in range(rng.integers(2, 6)):  # a few hard edges: objects against the background
      y, x = rng.integers(0, h), rng.integers(0, w)
      dy, dx = rng.integers(20, h // 2 + 21), rng.integers(20, w // 2 + 21)
      pixels[y:y + dy, x:x + dx] *= rng.uniform(0.4, 1.2)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format='JPEG', quality=90)
    jpegs.append(buffer.getvalue())
  return jpegs


class JpegSource:
  """A random-access source of encoded images, decoded on read as tfds.data_source decodes
  imagenet2012's Image feature without TensorFlow."""

  def __init__(self, jpegs: list[bytes]):
    self.jpegs = jpegs

  def __len__(self) -> int:
    return len(self.jpegs)

  def __getitem__(self, i: int) -> dict:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (imported in each worker on first read)
    return {'image': tfds.features.Image(shape=(None, None, 3)).decode_example_np(self.jpegs[i]),
            'label': np.int64(i % 1000)}


def transforms():
  spec = data.DATASETS['imagenet2012']
  options = dict(crop='random_resized', image_size=SIZE, crop_scale=(0.08, 1.0), pad=0, flip=True)

  def preprocess(batch):
    return images.to_inputs(batch, spec.mean, spec.std, SIZE)

  def augment(batch, seed, step, rows):
    return images.augment(batch, seed, step, rows, **options)
  return preprocess, augment, options


def pipeline_rate(split, batch: int, batches: int, workers: int) -> float:
  preprocess, augment, _ = transforms()
  it = pipeline.train_iterator(split, preprocess, batch, seed=0, augment=augment, workers=workers,
                               prefetch=2)
  first = next(it)  # worker start-up, not timed
  assert first['inputs'].shape == (batch, SIZE, SIZE, 3)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - start
  if hasattr(it, 'close'):
    it.close()
  return batches * batch / elapsed


def part_times(source, batch: int) -> dict:
  """Milliseconds per image of each part, in this process (normalize: batch by batch, as the pipeline)."""
  preprocess, _, options = transforms()
  n = len(source)
  start = time.perf_counter()
  decoded = [source[i]['image'] for i in range(n)]
  decode = time.perf_counter() - start
  start = time.perf_counter()
  crops = np.stack([images.augment_one(x, images.rng(0, 0, i), **options) for i, x in enumerate(decoded)])
  crop = time.perf_counter() - start
  start = time.perf_counter()
  for i in range(0, n - batch + 1, batch):
    preprocess({'image': crops[i:i + batch], 'label': np.zeros(batch, np.int64)})
  normalize = (time.perf_counter() - start) * n / (n - n % batch)
  return {k: round(1000 * v / n, 3) for k, v in
          (('decode', decode), ('crop_resize_flip', crop), ('normalize', normalize))}


def chip_rates() -> dict:
  return {chip: {model: round(peak * 1e12 * MFU / (3 * gflops * 1e9))
                 for model, gflops in FORWARD_GFLOPS.items()} for chip, peak in PEAK_TFLOPS.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=12, help='timed batches per run')
  parser.add_argument('--workers', default='0,1,2,N', help='comma-separated; N: os.cpu_count()')
  args = parser.parse_args()
  cores = os.cpu_count()
  counts = sorted({cores if w == 'N' else int(w) for w in args.workers.split(',')})

  jpegs = synthetic_jpegs(args.images)
  source = JpegSource(jpegs)
  split = pipeline.Split(source, ragged=('image',))
  parts = part_times(source, args.batch)
  kb = float(np.mean([len(j) for j in jpegs])) / 1024
  print(f'{len(jpegs)} JPEGs, mean {kb:.0f} KB; per image in this process: '
        + ', '.join(f'{k} {v:.2f} ms' for k, v in parts.items()))
  rates = {}
  for workers in counts:
    rates[workers] = pipeline_rate(split, args.batch, args.batches, workers)
    print(f'workers={workers}: {rates[workers]:.0f} images/s')

  per_core = rates.get(1) or rates[min(counts)]  # one worker process: one core's worth
  chips = chip_rates()
  cores_per_chip = {chip: {model: round(rate / per_core, 1) for model, rate in models.items()}
                    for chip, models in chips.items()}
  for chip, models in chips.items():
    print(f'{chip} at {MFU:.0%} MFU consumes ' + ', '.join(
        f'{model} {rate} images/s ({cores_per_chip[chip][model]} of these cores)'
        for model, rate in models.items()))
  print(json.dumps({
      'machine': f'{cores} cores', 'load': os.getloadavg(), 'mfu': MFU,
      'jpeg_kb': round(kb, 1),
      'images_per_s': {str(k): round(v, 1) for k, v in rates.items()}, 'per_image_ms': parts,
      'chips': chips, 'cores_per_chip': cores_per_chip}))


if __name__ == '__main__':  # grain's worker processes are spawned: they import this file again
  main()
