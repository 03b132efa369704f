"""bigjax's ViT train step against a plain PyTorch reference of the same model, on CPU.

  pip install -r benchmarks/requirements.txt
  python benchmarks/vit_vs_pytorch.py [--size S/16] [--batch 8] [--rounds 5] [--steps_per_round 3]
                                      [--threads N] [--cpu_matmul xla|onednn] [--compile]

The shape is experiments/imagenet_vit.py's model at a CPU-sized batch: ViT-S/16 (12 x 384, 6 heads,
GELU MLP 4x, LayerNorm, pre-norm, global average pooling, fixed 2-D sin-cos positions) on 224 x 224
x 3 images, 1,000 classes, batch 8, float32, AdamW (lr 1e-3, weight decay 1e-4, constant lr, no
clipping), with the run's data-side work left out: no augmentation, no mixup, no label smoothing.
Both sides train on the same random images and labels:

  A  bigjax: train.setup + train.compile_train_step from that config, the executable that
     `python -m bigjax.main` runs for it (its step also computes accuracy and grad norm).
     model.scan_layers and train.cpu_matmul are the flags' (by default unrolled layers, as lm_gpt.py's
     CPU-sized configs have them, and the experiment's oneDNN matmuls).
  B  PyTorch, eager: the same model written out below as timm writes a ViT (a Conv2d patch
     embedding, one qkv Linear, F.scaled_dot_product_attention), torch.optim.AdamW.
  C  (--compile) B under torch.compile.

B and C start from A's initial weights, and the script first checks that A and B give the same
logits on one batch, at init and again after the warmup steps, so the comparison is between one
model trained one way. The protocol is
benchmarks/seq2seq_vs_pytorch.py's, whose helpers this reuses: interleaved rounds A B (C) A B (C)
..., each timing --steps_per_round steps after compilation, --warmup_steps untimed steps and
--warmup_rounds untimed rounds; each round's line has the CPU seconds and page faults per step; the
load average at start and end. The summary: each contender's median rate in images per second, and
`ratio`, the median of the rounds' bigjax / pytorch ratios (>1: bigjax is faster). The last stdout
line is JSON:
  {"bigjax_images_per_s": ..., "pytorch_images_per_s": ..., "ratio": ..., "ratio_of_median_rates": ..., ...}
"""

import argparse
import copy
import functools
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `python benchmarks/vit_vs_pytorch.py` from anywhere
from bigjax import cpu  # noqa: E402, I001
from bigjax.cpu import heap  # noqa: E402
if __name__ == '__main__':
  heap.restart_with_huge_pages()  # the heap on huge pages for both contenders (bigjax/cpu/heap.py)
cpu.keep_freed_memory_on_cpu()  # glibc's malloc keeps freed memory, as `bigjax.main` sets it: before any
# library starts threads (bigjax/cpu/heap.py). Both contenders then share it.

import numpy as np  # noqa: E402
import seq2seq_vs_pytorch as common  # noqa: E402  (the protocol's helpers)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', default='S/16', help='a bigjax.models.vit.SIZES name')
  parser.add_argument('--batch', type=int, default=8, help='images per step')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--classes', type=int, default=1000)
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds; the summary is their median')
  parser.add_argument('--steps_per_round', type=int, default=3,
                      help='timed train steps per contender per round')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='intra-op threads for both XLA and PyTorch (default: all cores)')
  parser.add_argument('--cpu_matmul', default=None, choices=('xla', 'onednn'),
                      help="bigjax's train.cpu_matmul (default: the experiment's, oneDNN's): XLA's own "
                           "matmuls, or oneDNN's")
  parser.add_argument('--scan_layers', type=int, default=0, choices=(0, 1),
                      help="bigjax's model.scan_layers: 0 unrolls the layers (faster on CPU; lm_gpt's small "
                           'sizes do the same), 1 scans them (the experiment\'s, for compile time at scale)')
  parser.add_argument('--compile', action='store_true', help='also time PyTorch under torch.compile')
  parser.add_argument('--seed', type=int, default=0, help='seed of the random images and labels')
  parser.add_argument('--warmup_steps', type=int, default=2,
                      help='untimed steps per contender before the rounds (heap grown, thread pools warm; '
                           'torch.compile compiles in the first), after which both must give the same logits')
  parser.add_argument('--warmup_rounds', type=int, default=2,
                      help='untimed interleaved rounds after the warmup steps, exactly like the timed ones '
                           '(benchmarks/seq2seq_vs_pytorch.py says why)')
  args = parser.parse_args(argv)
  if min(args.rounds, args.steps_per_round, args.threads, args.batch, args.classes) < 1:
    parser.error('--rounds, --steps_per_round, --threads, --batch and --classes must be >= 1')
  if args.warmup_steps < 1:
    parser.error('--warmup_steps must be >= 1: the logits after them check that both sides train alike')
  if args.warmup_rounds < 0:
    parser.error('--warmup_rounds must be >= 0')
  return args


# --------------------------------------------------------------------------- A: bigjax

def bigjax_config(args):
  """experiments/imagenet_vit.py at --size, its data-side work off (see the docstring)."""
  from bigjax.config import validate
  config = common.experiment_config('imagenet_vit', args.size)
  config.data.augment.crop, config.data.augment.flip = 'none', False  # the batches are random arrays
  config.data.workers = 0
  config.task.mixup = config.task.cutmix = config.task.label_smoothing = 0.0
  # Constant lr, no clipping, as in lm_vs_pytorch.py: "the same on both sides" is simplest to see.
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0
  config.optim.clip_norm = 0.0
  config.model.dtype = 'float32'  # what 'auto' picks on CPU; explicit, as the PyTorch side is float32
  config.train.batch_size = args.batch
  config.train.cpu_matmul = args.cpu_matmul or config.train.cpu_matmul
  config.model.scan_layers = bool(args.scan_layers)
  validate(config)
  m = config.model
  # The reference below implements exactly this variant; fail loudly if the experiment drifts.
  expected = {'name': 'vit', 'mlp': 'gelu', 'norm': 'layernorm', 'dropout': 0.0, 'remat': 'none'}
  drifted = {k: m.get(k, 'default') for k, v in expected.items() if m.get(k, v) != v}
  if drifted or m.classifier not in ('gap', 'token') or config.optim.name != 'adamw':
    raise SystemExit(f'imagenet_vit changed ({drifted}, classifier {m.classifier}, optim '
                     f'{config.optim.name}): update the PyTorch reference to match')
  return config


def random_images_dataset(args):
  """A Dataset of the benchmark's shapes for train.setup (which reads one example's shapes)."""
  from bigjax import data
  from bigjax.data import pipeline
  one = {'inputs': np.zeros((1, args.image_size, args.image_size, 3), np.float32),
         'label': np.zeros(1, np.int32)}
  splits = {name: pipeline.Split(arrays=one) for name in ('train', 'eval', 'test')}
  return data.Dataset('random_images', args.classes, splits, preprocess=lambda batch: batch)


Bigjax = common.Bigjax  # bigjax's own train step, as bigjax.train.train_and_evaluate builds it


# --------------------------------------------------------------------------- B: PyTorch

def sincos2d(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
  """big_vision's fixed 2-D positions: sin and cos of the column, then of the row (1, rows * cols, width)."""
  y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing='ij')
  quarter = width // 4
  omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
  y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
  return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None].float()


class Block(nn.Module):
  """bigjax.models.transformer.Block, not causal: pre-norm attention then MLP, no projection biases."""

  def __init__(self, d_model: int, num_heads: int, mlp_hidden: int, eps: float):
    super().__init__()
    self.num_heads = num_heads
    self.attention_norm = nn.LayerNorm(d_model, eps=eps)
    self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
    self.out = nn.Linear(d_model, d_model, bias=False)
    self.mlp_norm = nn.LayerNorm(d_model, eps=eps)
    self.up = nn.Linear(d_model, mlp_hidden, bias=False)
    self.down = nn.Linear(mlp_hidden, d_model, bias=False)

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
    # flax's nn.gelu is the tanh approximation by default.
    return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate='tanh'))


class ViT(nn.Module):
  """bigjax.models.vit.ViT with learned or sincos2d positions and a token or gap classifier."""

  def __init__(self, *, image_size: int, patch_size: int, d_model: int, num_layers: int, num_heads: int,
               mlp_hidden: int, num_classes: int, classifier: str, positions: str,
               eps: float = 1e-6):  # flax LayerNorm's epsilon
    super().__init__()
    self.classifier, side = classifier, image_size // patch_size
    self.embedding = nn.Conv2d(3, d_model, patch_size, stride=patch_size)
    if positions == 'learned':
      self.position_embed = nn.Parameter(torch.zeros(1, side * side, d_model))
    else:
      self.register_buffer('position_embed', sincos2d(side, side, d_model), persistent=False)
    if classifier == 'token':
      self.class_token = nn.Parameter(torch.zeros(1, 1, d_model))
    self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_hidden, eps) for _ in range(num_layers))
    self.final_norm = nn.LayerNorm(d_model, eps=eps)
    self.head = nn.Linear(d_model, num_classes)

  def logits(self, images):
    """images (B, H, W, C), as bigjax's batches hold them; the conv reads them channels-first."""
    x = self.embedding(images.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2) + self.position_embed
    if self.classifier == 'token':
      x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    x = self.final_norm(x)
    return self.head(x[:, 0] if self.classifier == 'token' else x.mean(dim=1))

  def forward(self, images, labels):
    """Mean cross-entropy (bigjax's classification task)."""
    return F.cross_entropy(self.logits(images), labels)

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """Copies a ViT's params (numpy, scanned or per-layer) into this model."""
    d = self.final_norm.normalized_shape[0]

    def put(tensor, array):
      array = np.asarray(array, np.float32)
      assert tuple(tensor.shape) == array.shape, (tensor.shape, array.shape)
      tensor.copy_(torch.from_numpy(array.copy()))  # a writable copy, as torch wants

    def norm(module, tree):
      put(module.weight, tree['scale'])
      put(module.bias, tree['bias'])

    put(self.embedding.weight, np.transpose(params['embedding']['kernel'], (3, 2, 0, 1)))  # HWIO -> OIHW
    put(self.embedding.bias, params['embedding']['bias'])
    if isinstance(self.position_embed, nn.Parameter):
      put(self.position_embed, params['position_embed'])
    if self.classifier == 'token':
      put(self.class_token, params['class_token'])
    for i, block in enumerate(self.blocks):
      # scan_layers: one tree whose leaves are stacked over layers; else one tree per layer.
      layer = common._index(params['layers'], i) if 'layers' in params else params[f'layer_{i}']
      attention = layer['attention']
      put(block.qkv.weight, np.concatenate([np.asarray(attention[n]).reshape(d, -1).T
                                            for n in ('query', 'key', 'value')]))
      put(block.out.weight, np.asarray(attention['out']).reshape(-1, d).T)
      put(block.up.weight, np.asarray(layer['mlp']['up']['kernel']).T)
      put(block.down.weight, np.asarray(layer['mlp']['down']['kernel']).T)
      norm(block.attention_norm, layer['attention_norm'])
      norm(block.mlp_norm, layer['mlp_norm'])
    norm(self.final_norm, params['final_norm'])
    put(self.head.weight, np.asarray(params['head']['kernel']).T)
    put(self.head.bias, params['head']['bias'])


class Torch:
  """A plain PyTorch train step: forward, cross-entropy, backward, AdamW."""

  def __init__(self, model: ViT, lr: float, weight_decay: float, compile_model: bool = False):
    self.model = model.train()
    self.optimizer = common.adamw_like_bigjax(model, lr, weight_decay)
    self.loss = torch.compile(model) if compile_model else model

  def run(self, batches) -> float:
    for batch in batches:
      loss = self.loss(torch.from_numpy(batch['inputs']), torch.from_numpy(batch['label']).long())
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss.item()


# --------------------------------------------------------------------------- the race

class Batches:
  """Random images (standard normal, as preprocessed images roughly are) and labels; every
  contender trains on the same ones."""

  def __init__(self, seed: int, batch_size: int, image_size: int, classes: int):
    self.rng, self.classes = np.random.default_rng(seed), classes
    self.shape = (batch_size, image_size, image_size, 3)

  def take(self, count: int) -> list[dict]:
    return [{'inputs': self.rng.standard_normal(self.shape, np.float32),
             'label': self.rng.integers(0, self.classes, self.shape[0], dtype=np.int32)}
            for _ in range(count)]


def build(args, log):
  """The contenders, all at bigjax's initial weights, and the batches they share."""
  config = bigjax_config(args)
  args.cpu_matmul = config.train.cpu_matmul  # the flag's, else the experiment's: the summary names it
  a = Bigjax(config, random_images_dataset(args))
  m = config.model
  log(f'bigjax: ViT-{args.size}, {a.num_params:,} parameters, classifier={m.classifier}, '
      f'positions={m.positions}, scan_layers={m.get("scan_layers", True)}, '
      f'cpu_matmul={config.train.cpu_matmul}; setup + init + compile {a.compile_s:.1f} s')
  model = ViT(image_size=args.image_size, patch_size=m.patch_size, d_model=m.d_model, num_layers=m.num_layers,
              num_heads=m.num_heads, mlp_hidden=int(m.mlp_ratio * m.d_model), num_classes=args.classes,
              classifier=m.classifier, positions=m.positions)
  model.load_flax(a.jax.device_get(a.state.params))
  num_params = sum(p.numel() for p in model.parameters())
  if num_params != a.num_params:
    raise SystemExit(f'the PyTorch model has {num_params:,} parameters, bigjax {a.num_params:,}')
  compiled_model = copy.deepcopy(model) if args.compile else None  # copied before any training
  contenders = {'bigjax': a, 'pytorch': Torch(model, config.optim.lr, config.optim.weight_decay)}
  if args.compile:
    contenders['pytorch_compile'] = Torch(compiled_model, config.optim.lr, config.optim.weight_decay,
                                          compile_model=True)
  return contenders, Batches(args.seed, args.batch, args.image_size, args.classes)


def check_same_model(a: Bigjax, model: ViT, batch: dict, log, when: str = 'at init') -> None:
  """Same weights, same images: the logits must agree to float32 rounding, or we race two models.
  Checked again after the warmup's updates: the same logits at init do not prove the same gradients
  (this XLA's oneDNN fusion, train.cpu_matmul=onednn, computes a dot followed by a multiply with a
  broadcast operand wrongly, as in the mean pooling's gradient: the logits agree, the training not)."""
  with torch.no_grad():
    expected = model.logits(torch.from_numpy(batch['inputs'])).numpy()
  error = float(np.abs(a.logits({'inputs': batch['inputs']}) - expected).max() / np.abs(expected).max())
  log(f'check {when}: max |logits bigjax - pytorch| / max |logits| = {error:.2e}')
  if error > 1e-4:
    raise SystemExit(f'bigjax and the PyTorch reference disagree {when}: they are not the same model, '
                     'or do not train alike')


def main(argv=None) -> dict:
  args = parse_args(argv)
  common.set_threads(args.threads)
  log = functools.partial(print, flush=True)
  import jax
  load_start = os.getloadavg()  # a busy machine slows PyTorch's threads far more than XLA's
  log(f'threads: {args.threads} (XLA via PJRT_NPROC, torch.set_num_threads); '
      f'jax {jax.__version__}, torch {torch.__version__}; load average at start: '
      f'{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}')
  contenders, batches = build(args, log)
  a = contenders['bigjax']
  check_batch = batches.take(1)[0]
  check_same_model(a, contenders['pytorch'].model, check_batch, log)

  warmup = batches.take(args.warmup_steps)  # torch.compile compiles here; XLA compiled in build
  for name, runner in contenders.items():
    seconds, loss = common.timed(runner, warmup)
    log(f'warmup {name}: {seconds:.1f} s, loss {loss:.4f}')
  check_same_model(a, contenders['pytorch'].model, check_batch, log, f'after {args.warmup_steps} steps')

  result = common.interleaved_rounds(contenders, batches, args.batch, 'images', args, log=log)
  result.update(size=args.size, batch=args.batch, image_size=args.image_size, classes=args.classes,
                cpu_matmul=args.cpu_matmul, scan_layers=args.scan_layers, rounds=args.rounds,
                steps_per_round=args.steps_per_round,
                warmup_steps=args.warmup_steps, warmup_rounds=args.warmup_rounds, threads=args.threads,
                loadavg_start=round(load_start[0], 2))
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
