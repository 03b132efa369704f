"""bigjax's Conformer-CTC train step, front end included, against a plain PyTorch reference, on CPU.

  pip install -r benchmarks/requirements.txt
  python benchmarks/conformer_vs_pytorch.py [--size tiny] [--batch 16] [--seconds 3] [--rounds 5]
                                            [--steps_per_round 3] [--threads N] [--compile]

The shape is experiments/spoken_conformer.py:offline's model at --size (tiny: 4 Conformer blocks x 144,
4 heads, GELU FFN 4x, depthwise kernel 15, 32 subsampling channels), float32, AdamW at the experiment's lr and
weight decay (constant lr, no clipping), on random int16 audio of --seconds at 16 kHz (each utterance
0.75 to 1 times that long, the rest padding) and random transcripts, with the randomness left out:
no SpecAugment, dropout 0 (masks would differ between the frameworks). Each step starts from int16
samples: log-mel features, utterance normalization, 4x subsampling, the encoder, CTC loss, AdamW.

  A  bigjax: train.setup + train.compile_train_step from that config, the executable that
     `python -m bigjax.main` runs for it.
  B  PyTorch, eager: the same model written out below (torchaudio does not install with the pinned
     torch): framing by unfold, torch.fft.rfft, bigjax.audio.mel_filterbank's matrix, Conv2d
     subsampling, Conformer blocks with RoPE and F.scaled_dot_product_attention, F.ctc_loss, AdamW.
  C  (--compile) B under torch.compile.

B and C start from A's initial weights, and the script checks that A and B give the same logits on
one batch, at init and after the warmup steps. The protocol is benchmarks/seq2seq_vs_pytorch.py's
(interleaved rounds, warmup steps and rounds, CPU seconds and page faults per step, the load average).
The summary: each contender's median rate in utterances per second and `ratio`, the median of the
rounds' bigjax / pytorch ratios (>1: bigjax is faster). The last stdout line is JSON:
  {"bigjax_utterances_per_s": ..., "pytorch_utterances_per_s": ..., "ratio": ..., ...}
"""

import argparse
import copy
import functools
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `python benchmarks/conformer_vs_pytorch.py` from anywhere
from bigjax import cpu  # noqa: E402, I001
from bigjax.cpu import heap  # noqa: E402
if __name__ == '__main__':
  heap.restart_with_huge_pages()  # the heap on huge pages for both contenders (bigjax/cpu/heap.py)
cpu.keep_freed_memory_on_cpu()  # as `bigjax.main` sets it, before any library starts threads

import numpy as np  # noqa: E402
import seq2seq_vs_pytorch as common  # noqa: E402  (the protocol's helpers)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

SAMPLE_RATE, WIN, HOP, N_FFT = 16000, 400, 160, 512  # bigjax.audio.log_mel's defaults


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', default='tiny', help='a bigjax.models.conformer.SIZES name')
  parser.add_argument('--batch', type=int, default=16, help='utterances per step')
  parser.add_argument('--seconds', type=float, default=3.0, help='the padded length of an utterance')
  parser.add_argument('--transcript_len', type=int, default=30, help='the longest transcript, in labels')
  parser.add_argument('--vocab', type=int, default=32, help='CTC outputs, the blank (0) included')
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds; the summary is their median')
  parser.add_argument('--steps_per_round', type=int, default=3,
                      help='timed train steps per contender per round')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='intra-op threads for both XLA and PyTorch (default: all cores)')
  parser.add_argument('--scan_layers', type=int, default=0, choices=(0, 1),
                      help="bigjax's model.scan_layers: 0 unrolls the layers (faster on CPU), 1 scans them")
  parser.add_argument('--compile', action='store_true', help='also time PyTorch under torch.compile')
  parser.add_argument('--seed', type=int, default=0, help='seed of the random audio and transcripts')
  parser.add_argument('--warmup_steps', type=int, default=2,
                      help='untimed steps per contender before the rounds, after which both must agree')
  parser.add_argument('--warmup_rounds', type=int, default=2, help='untimed interleaved rounds')
  args = parser.parse_args(argv)
  if min(args.rounds, args.steps_per_round, args.threads, args.batch, args.transcript_len) < 1:
    parser.error('--rounds, --steps_per_round, --threads, --batch and --transcript_len must be >= 1')
  if args.vocab < 4 or args.seconds * SAMPLE_RATE < 4 * WIN:
    parser.error('--vocab must be >= 4 (the blank, two reserved ids and a label) and --seconds >= 0.1')
  if args.warmup_steps < 1 or args.warmup_rounds < 0:
    parser.error('--warmup_steps must be >= 1 (the check after them) and --warmup_rounds >= 0')
  return args


# --------------------------------------------------------------------------- A: bigjax

def bigjax_config(args):
  """experiments/spoken_conformer.py at --size, its randomness off (see the docstring)."""
  from bigjax.config import validate
  from bigjax.models import conformer
  config = common.experiment_config('spoken_conformer', 'offline')
  config.model.update(conformer.SIZES[args.size])
  config.model.spec_augment = False
  config.model.dropout = 0.0
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0
  config.optim.clip_norm = 0.0
  config.model.dtype = 'float32'
  config.model.scan_layers = bool(args.scan_layers)
  config.train.batch_size = args.batch
  if 'workers' in config.data:
    config.data.workers = 0
  validate(config)
  m = model_fields(config)
  expected = {'name': 'conformer_ctc', 'encoder': 'conformer', 'normalize': 'utterance', 'mlp': 'gelu',
              'remat': 'none', 'n_mels': 80}
  drifted = {k: m.get(k) for k, v in expected.items() if m.get(k) != v}
  if drifted or config.optim.name != 'adamw':
    raise SystemExit(f'spoken_conformer changed ({drifted}, optim {config.optim.name}): update the '
                     'PyTorch reference to match')
  return config


def model_fields(config) -> dict:
  from bigjax import models
  return {**models.defaults('conformer_ctc'), **config.model.to_dict()}


def random_dataset(args):
  from bigjax.data import speech
  return speech.random_dataset(4 * args.batch, int(args.seconds * SAMPLE_RATE), args.transcript_len,
                               args.vocab, args.seed)


def bigjax_logits(a, batch: dict) -> np.ndarray:
  """The model's logits at the current weights, padded frames zeroed (they are no output)."""
  apply = a.jax.jit(lambda params, x, n: a.s.model.apply({'params': params}, x, n, train=False))
  with a.active():
    logits, valid = apply(a.state.params, batch['inputs'], batch['input_length'])
  return np.where(np.asarray(valid)[..., None], np.asarray(logits), 0)


# --------------------------------------------------------------------------- B: PyTorch

def rope(x, positions, base: float = 10000.0):
  """bigjax.models.transformer.rope on (B, heads, T, head_dim): the two halves rotate together."""
  half = x.shape[-1] // 2
  freqs = base ** (-torch.arange(half, dtype=torch.float32) / half)
  angles = positions[:, None].float() * freqs  # (T, half)
  cos, sin = angles.cos(), angles.sin()
  x1, x2 = x[..., :half], x[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
  """bigjax.models.conformer.ConformerBlock: FFN/2, RoPE self-attention, conv module, FFN/2, LayerNorm."""

  def __init__(self, d: int, heads: int, hidden: int, kernel: int, eps: float = 1e-6):  # flax's epsilon
    super().__init__()
    self.heads, self.kernel = heads, kernel
    norm = lambda: nn.LayerNorm(d, eps=eps)
    self.ffn_in_norm, self.attention_norm, self.conv_norm_in, self.ffn_out_norm, self.final_norm = (
        norm(), norm(), norm(), norm(), norm())
    ffn = lambda: nn.Sequential(nn.Linear(d, hidden, bias=False), nn.GELU('tanh'),  # flax's gelu: tanh
                                nn.Linear(hidden, d, bias=False))
    self.ffn_in, self.ffn_out = ffn(), ffn()
    self.qkv = nn.Linear(d, 3 * d, bias=False)
    self.out = nn.Linear(d, d, bias=False)
    self.pointwise_in = nn.Linear(d, 2 * d)
    self.depthwise = nn.Conv1d(d, d, kernel, groups=d)
    self.depthwise_norm = norm()
    self.pointwise_out = nn.Linear(d, d)

  def forward(self, x, valid, positions):
    b, t, d = x.shape
    x = x + 0.5 * self.ffn_in(self.ffn_in_norm(x))
    q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    q, k = rope(q, positions), rope(k, positions)
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    x = x + self.out(h.transpose(1, 2).reshape(b, t, d))
    h = F.glu(self.pointwise_in(self.conv_norm_in(x)), dim=-1) * valid[..., None]
    lo = (self.kernel - 1) // 2  # flax's SAME: the odd one out on the right
    h = self.depthwise(F.pad(h.transpose(1, 2), (lo, self.kernel - 1 - lo))).transpose(1, 2)
    x = x + self.pointwise_out(F.silu(self.depthwise_norm(h)))
    x = x + 0.5 * self.ffn_out(self.ffn_out_norm(x))
    return self.final_norm(x)


class ConformerCTC(nn.Module):
  """bigjax.models.conformer.ConformerCTC (normalize='utterance', encoder='conformer'), CTC loss."""

  def __init__(self, *, n_mels: int, channels: int, d: int, layers: int, heads: int, hidden: int, kernel: int,
               vocab: int):
    super().__init__()
    from bigjax import audio
    self.register_buffer('bank', torch.from_numpy(audio.mel_filterbank(SAMPLE_RATE, N_FFT, n_mels)),
                         persistent=False)
    self.register_buffer('window', torch.hann_window(WIN, periodic=True), persistent=False)
    self.conv_0 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
    self.conv_1 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    half = lambda n: (n + 1) // 2  # a stride-2 conv padded by one on both sides
    self.project = nn.Linear(channels * half(half(n_mels)), d)
    self.blocks = nn.ModuleList(Block(d, heads, hidden, kernel) for _ in range(layers))
    self.head = nn.Linear(d, vocab)

  def features(self, samples, lengths):
    """bigjax.audio.log_mel then normalize_utterance: (B, T, n_mels) and the valid frames (B, T)."""
    x = samples.float() / 32768.0
    frames = x.unfold(1, WIN, HOP) * self.window  # (B, T, WIN): frame t is [t * hop, t * hop + win)
    spectrum = torch.fft.rfft(frames, n=N_FFT)
    features = torch.log(torch.clamp((spectrum.real ** 2 + spectrum.imag ** 2) @ self.bank, min=1e-6))
    count = frames.shape[1]
    valid = torch.arange(count)[None] < torch.clamp(1 + (lengths - WIN) // HOP, 0, count)[:, None]
    mask = valid[..., None]
    n = mask.sum(1, keepdim=True).clamp(min=1)
    centred = torch.where(mask, features - torch.where(mask, features, 0).sum(1, keepdim=True) / n, 0)
    return centred * torch.rsqrt((centred ** 2).sum(1, keepdim=True) / n + 1e-5), valid

  def logits(self, samples, lengths):
    x, valid = self.features(samples, lengths)
    x = x[:, None]  # (B, 1, T, mel): Conv2d over (time, mel)
    for conv in (self.conv_0, self.conv_1):
      x = F.relu(conv(x * valid[:, None, :, None]))
      valid = valid[:, ::2]
    x = self.project(x.permute(0, 2, 3, 1).flatten(2)) * valid[..., None]  # (mel, channel) as bigjax flattens
    positions = torch.arange(x.shape[1])
    for block in self.blocks:
      x = block(x, valid, positions)
    return self.head(x), valid

  def forward(self, samples, lengths, labels, label_lengths):
    logits, valid = self.logits(samples, lengths)
    log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)  # (T, B, vocab)
    # The ctc task's loss: summed over utterances, divided by the batch's label tokens.
    losses = F.ctc_loss(log_probs, labels, valid.sum(1), label_lengths, blank=0, reduction='sum')
    return losses / label_lengths.sum()

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """Copies a ConformerCTC's params (numpy, scanned or per-layer) into this model."""
    def put(tensor, array):
      array = np.asarray(array, np.float32)
      assert tuple(tensor.shape) == array.shape, (tensor.shape, array.shape)
      tensor.copy_(torch.from_numpy(array.copy()))

    def linear(module, tree):
      put(module.weight, np.asarray(tree['kernel']).T)
      if module.bias is not None:
        put(module.bias, tree['bias'])

    def norm(module, tree):
      put(module.weight, tree['scale'])
      put(module.bias, tree['bias'])

    sub = params['subsample']
    for i, conv in enumerate((self.conv_0, self.conv_1)):
      put(conv.weight, np.transpose(sub[f'conv_{i}']['kernel'], (3, 2, 0, 1)))  # HWIO -> OIHW
      put(conv.bias, sub[f'conv_{i}']['bias'])
    linear(self.project, sub['project'])
    for i, block in enumerate(self.blocks):
      layer = common._index(params['layers'], i) if 'layers' in params else params[f'layer_{i}']
      d = block.out.weight.shape[0]
      attention = layer['attention']
      put(block.qkv.weight, np.concatenate([np.asarray(attention[n]).reshape(d, -1).T
                                            for n in ('query', 'key', 'value')]))
      put(block.out.weight, np.asarray(attention['out']).reshape(-1, d).T)
      for name in ('ffn_in', 'ffn_out'):
        linear(getattr(block, name)[0], layer[name]['up'])
        linear(getattr(block, name)[2], layer[name]['down'])
      for name in ('ffn_in_norm', 'attention_norm', 'ffn_out_norm', 'final_norm'):
        norm(getattr(block, name), layer[name])
      conv = layer['conv']
      norm(block.conv_norm_in, conv['norm'])
      norm(block.depthwise_norm, conv['conv_norm'])
      linear(block.pointwise_in, conv['pointwise_in'])
      linear(block.pointwise_out, conv['pointwise_out'])
      put(block.depthwise.weight, np.transpose(conv['depthwise']['kernel'], (2, 1, 0)))
      put(block.depthwise.bias, conv['depthwise']['bias'])
    linear(self.head, params['head'])


class Torch:
  """A plain PyTorch train step: forward, CTC loss, backward, AdamW."""

  def __init__(self, model: ConformerCTC, lr: float, weight_decay: float, compile_model: bool = False):
    self.model = model.train()
    self.optimizer = common.adamw_like_bigjax(model, lr, weight_decay)
    self.loss = torch.compile(model) if compile_model else model

  def run(self, batches) -> float:
    for batch in batches:
      loss = self.loss(*(torch.from_numpy(batch[k]).long() if k != 'inputs' else torch.from_numpy(batch[k])
                         for k in ('inputs', 'input_length', 'labels', 'label_length')))
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss.item()


# --------------------------------------------------------------------------- the race

class Batches:
  """Random int16 audio (each utterance 0.75 to 1 times --seconds, zeros after) and transcripts of
  labels 3.. vocab-1 (as bigjax.data.speech.random_dataset's; 0 pads and is the blank); every
  contender trains on the same ones."""

  def __init__(self, args):
    self.rng, self.args = np.random.default_rng(args.seed), args
    self.samples = int(args.seconds * SAMPLE_RATE)

  def take(self, count: int) -> list[dict]:
    a, batches = self.args, []
    for _ in range(count):
      lengths = self.rng.integers(3 * self.samples // 4, self.samples + 1, a.batch).astype(np.int32)
      audio = self.rng.normal(0, 3000, (a.batch, self.samples)).clip(-32768, 32767).astype(np.int16)
      audio[np.arange(self.samples)[None] >= lengths[:, None]] = 0
      label_length = self.rng.integers(a.transcript_len // 2, a.transcript_len + 1, a.batch).astype(np.int32)
      labels = self.rng.integers(3, a.vocab, (a.batch, a.transcript_len)).astype(np.int32)
      labels[np.arange(a.transcript_len)[None] >= label_length[:, None]] = 0
      batches.append({'inputs': audio, 'input_length': lengths, 'labels': labels,
                      'label_length': label_length})
    return batches


def build(args, log):
  """The contenders, all at bigjax's initial weights, and the batches they share."""
  config = bigjax_config(args)
  a = common.Bigjax(config, random_dataset(args))
  m = model_fields(config)
  log(f'bigjax: conformer_ctc:{args.size}, {a.num_params:,} parameters, scan_layers={m["scan_layers"]}; '
      f'setup + init + compile {a.compile_s:.1f} s')
  model = ConformerCTC(n_mels=m['n_mels'], channels=m['subsample_channels'] or m['d_model'], d=m['d_model'],
                       layers=m['num_layers'], heads=m['num_heads'],
                       hidden=int(m['ffn_ratio'] * m['d_model']),
                       kernel=m['conv_kernel'], vocab=a.s.dataset.num_classes)
  model.load_flax(a.jax.device_get(a.state.params))
  num_params = sum(p.numel() for p in model.parameters())
  if num_params != a.num_params:
    raise SystemExit(f'the PyTorch model has {num_params:,} parameters, bigjax {a.num_params:,}')
  compiled_model = copy.deepcopy(model) if args.compile else None
  contenders = {'bigjax': a, 'pytorch': Torch(model, config.optim.lr, config.optim.weight_decay)}
  if args.compile:
    contenders['pytorch_compile'] = Torch(compiled_model, config.optim.lr, config.optim.weight_decay,
                                          compile_model=True)
  return contenders, Batches(args)


def check_same_model(a, model: ConformerCTC, batch: dict, log, when: str = 'at init', *,
                     tolerance: float = 1e-4) -> None:
  """Same weights, same audio: the logits on real frames must agree to float32 rounding. After
  training steps the tolerance is looser: the features' last-bit differences (two FFTs) move a few
  subsampling pre-activations across ReLU's kink, which changes that channel's gradient by a fraction
  of a percent, and Adam's normalized step carries it into the weights."""
  with torch.no_grad():
    logits, valid = model.logits(torch.from_numpy(batch['inputs']), torch.from_numpy(batch['input_length']))
    expected = (logits * valid[..., None]).numpy()
  got = bigjax_logits(a, batch)
  error = float(np.abs(got - expected).max() / np.abs(expected).max())
  log(f'check {when}: max |logits bigjax - pytorch| / max |logits| = {error:.2e}')
  if got.shape != expected.shape or error > tolerance:
    raise SystemExit(f'bigjax and the PyTorch reference disagree {when}: they are not the same model, '
                     'or do not train alike')


def main(argv=None) -> dict:
  args = parse_args(argv)
  common.set_threads(args.threads)
  log = functools.partial(print, flush=True)
  import jax
  load_start = os.getloadavg()
  log(f'threads: {args.threads}; jax {jax.__version__}, torch {torch.__version__}; load average at start: '
      f'{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}')
  contenders, batches = build(args, log)
  a = contenders['bigjax']
  check_batch = batches.take(1)[0]
  check_same_model(a, contenders['pytorch'].model, check_batch, log)

  warmup = batches.take(args.warmup_steps)
  for name, runner in contenders.items():
    seconds, loss = common.timed(runner, warmup)
    log(f'warmup {name}: {seconds:.1f} s, loss {loss:.4f}')
  check_same_model(a, contenders['pytorch'].model, check_batch, log, f'after {args.warmup_steps} steps',
                   tolerance=1e-3)

  result = common.interleaved_rounds(contenders, batches, args.batch, 'utterances', args, log=log)
  result.update(size=args.size, batch=args.batch, seconds=args.seconds, transcript_len=args.transcript_len,
                vocab=args.vocab, scan_layers=args.scan_layers, rounds=args.rounds,
                steps_per_round=args.steps_per_round, warmup_steps=args.warmup_steps,
                warmup_rounds=args.warmup_rounds, threads=args.threads,
                loadavg_start=round(load_start[0], 2))
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
