"""bigjax's GPT train step against a plain PyTorch reference of the same model, on CPU.

  pip install -r benchmarks/requirements.txt
  python benchmarks/lm_vs_pytorch.py [--rounds 5] [--steps_per_round 5] [--threads N] [--compile]

The shape is experiments/lm_gpt.py:small (6 x 384, 6 heads, GELU MLP 4x, LayerNorm, pre-norm,
RoPE, tied embedding, byte vocabulary of 259, context 256, batch 16), float32, AdamW (lr 1e-3,
weight decay 0.1, no clipping, constant lr). Both sides train on the same random token batches:

  A  bigjax: train.setup + train.compile_train_step from the experiment's config, exactly the
     executable that `python -m bigjax.main` runs (its step also computes accuracy and grad norm).
  B  PyTorch, eager: the same model written out below, F.scaled_dot_product_attention(is_causal=True),
     torch.optim.AdamW.
  C  (--compile) B under torch.compile.

B and C start from A's initial weights, and the script first checks that A and B give the same
logits on one batch, so the comparison is between one model. Runs are interleaved A B (C) A B (C) ...,
each round timing --steps_per_round steps after compilation and --warmup_steps untimed steps. The
summary: each contender's median rate, and `ratio`, the median of the rounds' bigjax / pytorch
ratios (`ratio_of_median_rates` beside it). The last stdout line is JSON:
  {"bigjax_tokens_per_s": ..., "pytorch_tokens_per_s": ..., "ratio": ..., "ratio_of_median_rates": ..., ...}
"""

import argparse
import copy
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `python benchmarks/lm_vs_pytorch.py` from anywhere
from bigjax import cpu  # noqa: E402, I001
cpu.keep_freed_memory_on_cpu()  # glibc's malloc keeps freed memory, as `bigjax.main` sets it: before any
# library starts threads (bigjax/cpu/heap.py). Both contenders then share it.

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from runner import Bigjax  # noqa: E402  (bigjax's side, torch-free: tests/test_benchmarks.py)
from torch import nn  # noqa: E402


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds; the summary is their median')
  parser.add_argument('--steps_per_round', type=int, default=5,
                      help='timed train steps per contender per round')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='intra-op threads for both XLA and PyTorch (default: all cores)')
  parser.add_argument('--compile', action='store_true', help='also time PyTorch under torch.compile')
  parser.add_argument('--data_dir', default=os.path.join(tempfile.gettempdir(), 'bigjax_benchmark_data'),
                      help="TFDS data dir for bigjax's setup (python_stdlib is prepared there on first use)")
  parser.add_argument('--seed', type=int, default=0, help='seed of the random token batches')
  parser.add_argument('--warmup_steps', type=int, default=3,
                      help='untimed steps per contender before the rounds, to reach steady state (heap '
                           'grown, caches and thread pools warm; torch.compile compiles in the first)')
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.steps_per_round < 1 or args.threads < 1 or args.warmup_steps < 1:
    parser.error('--rounds, --steps_per_round, --threads and --warmup_steps must be >= 1')
  return args


def set_threads(n: int) -> None:
  """The same number of compute threads for both frameworks. Must run before jax is imported.

  XLA has no intra-op thread flag: its CPU client sizes the thread pool it runs (and splits
  matmuls over, with xla_cpu_multi_thread_eigen) from PJRT_NPROC, else the CPUs this process
  may use. TensorFlow's `intra_op_parallelism_threads` is not an XLA flag: XLA_FLAGS aborts on
  `--intra_op_parallelism_threads=N` and silently ignores it without the dashes.
  """
  if 'jax' in sys.modules:
    raise RuntimeError('set_threads must run before jax is imported')
  os.environ['PJRT_NPROC'] = str(n)
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=true').strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  torch.set_num_threads(n)


# --------------------------------------------------------------------------- A: bigjax

def bigjax_config(data_dir: str):
  """experiments/lm_gpt.py:small, with the optimizer made plain AdamW so PyTorch can match it."""
  from bigjax.config import validate
  spec = importlib.util.spec_from_file_location('_lm_gpt', os.path.join(REPO, 'experiments', 'lm_gpt.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('small')
  config.data.data_dir = data_dir
  # A warmup + cosine schedule and clipping cost next to nothing, but "the same on both sides" is
  # simplest to see with none: constant lr, no clipping (bigjax still computes the grad norm).
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0
  config.optim.clip_norm = 0.0
  config.model.dtype = 'float32'  # what 'auto' picks on CPU; explicit, as the PyTorch side is float32
  validate(config)
  m = config.model
  # The reference below implements exactly this variant; fail loudly if the experiment drifts.
  expected = {'mlp': 'gelu', 'norm': 'layernorm', 'positions': 'rope', 'tied_embedding': True,
              'num_kv_heads': 0, 'dropout': 0.0, 'remat': 'none'}
  drifted = {k: m[k] for k, v in expected.items() if m[k] != v}
  if drifted or config.optim.name != 'adamw' or config.task.get('z_loss', 0.0):
    raise SystemExit(f'lm_gpt small changed ({drifted}, optim {config.optim.name}, '
                     f'z_loss {config.task.get("z_loss")}): update the PyTorch reference to match')
  return config


# --------------------------------------------------------------------------- B: PyTorch

def rope(x, cos, sin):
  """bigjax's rotary embedding: the two halves of each head (not interleaved pairs) rotate together."""
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
  """bigjax.models.transformer.Block: pre-norm attention then MLP, no biases in the projections."""

  def __init__(self, d_model: int, num_heads: int, mlp_hidden: int, eps: float):
    super().__init__()
    self.num_heads = num_heads
    self.attention_norm = nn.LayerNorm(d_model, eps=eps)
    self.query, self.key, self.value, self.out = (nn.Linear(d_model, d_model, bias=False) for _ in range(4))
    self.mlp_norm = nn.LayerNorm(d_model, eps=eps)
    self.up = nn.Linear(d_model, mlp_hidden, bias=False)
    self.down = nn.Linear(mlp_hidden, d_model, bias=False)

  def forward(self, x, cos, sin):
    return self.mlp_residual(self.attention_residual(x, cos, sin))

  def attention_residual(self, x, cos, sin):
    """x + attention(norm(x)): the block's first half (benchmarks/lm_parts.py times it alone)."""
    b, t, d = x.shape
    h = self.attention_norm(x)

    def heads(projection):  # (B, T, D) -> (B, heads, T, head_dim), SDPA's layout
      return projection(h).view(b, t, self.num_heads, -1).transpose(1, 2)

    q, k, v = rope(heads(self.query), cos, sin), rope(heads(self.key), cos, sin), heads(self.value)
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(head_dim), as jax's
    return x + self.out(attended.transpose(1, 2).reshape(b, t, d))

  def mlp_residual(self, x):
    # flax's nn.gelu is the tanh approximation by default.
    return x + self.down(F.gelu(self.up(self.mlp_norm(x)), approximate='tanh'))


def _index(tree, i):
  return {k: _index(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}


class GPT(nn.Module):
  """bigjax.models.transformer.TransformerLM with positions='rope', tied_embedding=True."""

  def __init__(self, *, vocab: int, num_layers: int, d_model: int, num_heads: int, mlp_hidden: int,
               max_length: int, pad_id: int, eps: float = 1e-6):  # flax LayerNorm's epsilon
    super().__init__()
    self.pad_id = pad_id
    self.embed = nn.Embedding(vocab, d_model)
    self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_hidden, eps) for _ in range(num_layers))
    self.final_norm = nn.LayerNorm(d_model, eps=eps)
    # bigjax recomputes the angles in every layer; they depend only on the position, so tabulate once.
    half = d_model // num_heads // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(max_length, dtype=torch.float32)[:, None] * freqs
    self.register_buffer('cos', angles.cos(), persistent=False)
    self.register_buffer('sin', angles.sin(), persistent=False)

  def logits(self, tokens):
    t = tokens.shape[1]
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, self.cos[:t], self.sin[:t])
    return F.linear(self.final_norm(x), self.embed.weight)  # tied: the embedding is the unembedding

  def forward(self, tokens, targets):
    """Mean cross-entropy over target tokens, padding excluded (bigjax's lm task)."""
    logits = self.logits(tokens)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=self.pad_id)

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """Copies a TransformerLM's params (numpy, scanned or per-layer) into this model."""
    def put(tensor, array):
      tensor.copy_(torch.from_numpy(np.array(array, np.float32)))  # a writable copy, as torch wants

    def square(kernel):  # flax (in, ...) kernels -> torch (out, in) weights
      return kernel.reshape(self.embed.embedding_dim, -1).T

    put(self.embed.weight, params['embed']['embedding'])
    put(self.final_norm.weight, params['final_norm']['scale'])
    put(self.final_norm.bias, params['final_norm']['bias'])
    for i, block in enumerate(self.blocks):
      # scan_layers: one tree whose leaves are stacked over layers; else one tree per layer.
      layer = _index(params['layers'], i) if 'layers' in params else params[f'layer_{i}']
      attention = layer['attention']
      for name in ('query', 'key', 'value'):
        put(getattr(block, name).weight, square(attention[name]))
      put(block.out.weight, attention['out'].reshape(-1, self.embed.embedding_dim).T)
      put(block.up.weight, layer['mlp']['up']['kernel'].T)
      put(block.down.weight, layer['mlp']['down']['kernel'].T)
      for norm in ('attention_norm', 'mlp_norm'):
        put(getattr(block, norm).weight, layer[norm]['scale'])
        put(getattr(block, norm).bias, layer[norm]['bias'])


class Torch:
  """A plain PyTorch train step: forward, cross-entropy, backward, AdamW."""

  def __init__(self, model: GPT, lr: float, weight_decay: float, compile_model: bool = False):
    self.model = model
    # bigjax's adamw decays every weight but the norms' scales and biases (optim.decayed).
    decay = [p for name, p in model.named_parameters() if 'norm' not in name]
    no_decay = [p for name, p in model.named_parameters() if 'norm' in name]
    self.optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                                        {'params': no_decay, 'weight_decay': 0.0}], lr=lr)
    self.loss = torch.compile(model) if compile_model else model

  def run(self, batches) -> float:
    for batch in batches:
      # int64 for cross_entropy's targets; the conversion of 4,096 ids is noise.
      loss = self.loss(torch.from_numpy(batch['inputs']).long(), torch.from_numpy(batch['targets']).long())
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss.item()


# --------------------------------------------------------------------------- the race

class Batches:
  """Random byte tokens (no special ids, so no padding) of the benchmark's shape; every contender
  trains on the same ones. Inputs and targets are one window shifted by a token, as in bigjax's data."""

  def __init__(self, seed: int, batch_size: int, seq_len: int, vocab: int, first_id: int):
    self.rng, self.shape, self.ids = np.random.default_rng(seed), (batch_size, seq_len + 1), (first_id, vocab)

  def take(self, count: int) -> list[dict]:
    windows = [self.rng.integers(*self.ids, self.shape, dtype=np.int32) for _ in range(count)]
    return [{'inputs': w[:, :-1].copy(), 'targets': w[:, 1:].copy()} for w in windows]


def median_ratio(rates: list, reference_rates: list) -> float:
  """The median of the rounds' ratios. Each round's ratio compares two runs seconds apart, so it
  survives the machine's speed drifting between rounds, which a ratio of the two medians does not:
  those can come from rounds of different speeds (e.g. 1.35 against 1.9 s a PyTorch step, one run)."""
  return statistics.median(a / b for a, b in zip(rates, reference_rates, strict=True))


def timed(runner, batches) -> tuple[float, float]:
  start = time.perf_counter()
  loss = runner.run(batches)
  return time.perf_counter() - start, loss


def build(args, log):
  """The contenders, all at bigjax's initial weights, and the batches they share."""
  from bigjax.data.tokenizers import ByteTokenizer

  config = bigjax_config(args.data_dir)
  a = Bigjax(config)
  m, tokenizer = config.model, ByteTokenizer()
  log(f'bigjax: {a.num_params:,} parameters, scan_layers={m.scan_layers}, remat={m.remat}; '
      f'setup + init + compile {a.compile_s:.1f} s')
  vocab, seq_len = a.s.dataset.num_classes, config.data.seq_len
  assert vocab == tokenizer.vocab_size, (vocab, tokenizer.vocab_size)
  model = GPT(vocab=vocab, num_layers=m.num_layers, d_model=m.d_model, num_heads=m.num_heads,
              mlp_hidden=int(m.mlp_ratio * m.d_model), max_length=seq_len, pad_id=tokenizer.pad_id)
  model.load_flax(a.jax.device_get(a.state.params))
  num_params = sum(p.numel() for p in model.parameters())
  if num_params != a.num_params:
    raise SystemExit(f'the PyTorch model has {num_params:,} parameters, bigjax {a.num_params:,}')

  compiled_model = copy.deepcopy(model) if args.compile else None  # copied before any training
  contenders = {'bigjax': a, 'pytorch': Torch(model, config.optim.lr, config.optim.weight_decay)}
  if args.compile:
    contenders['pytorch_compile'] = Torch(compiled_model, config.optim.lr, config.optim.weight_decay,
                                          compile_model=True)
  batches = Batches(args.seed, a.s.batch_size, seq_len, vocab, first_id=vocab - 256)  # after pad/bos/eos
  return config, contenders, batches


def check_same_model(a: Bigjax, model: GPT, batch: dict, log) -> None:
  """Same weights, same tokens: the logits must agree to float32 rounding, or we race two models."""
  with torch.no_grad():
    expected = model.logits(torch.from_numpy(batch['inputs']).long()).numpy()
  error = float(np.abs(a.logits({'inputs': batch['inputs']}) - expected).max() / np.abs(expected).max())
  log(f'check: max |logits bigjax - pytorch| / max |logits| = {error:.2e}')
  if error > 1e-4:
    raise SystemExit('bigjax and the PyTorch reference disagree: they are not the same model')


def main(argv=None) -> dict:
  args = parse_args(argv)
  set_threads(args.threads)
  from bigjax import flops

  log = functools.partial(print, flush=True)
  import jax
  log(f'threads: {args.threads} (XLA via PJRT_NPROC, torch.set_num_threads); '
      f'jax {jax.__version__}, torch {torch.__version__}')
  config, contenders, batches = build(args, log)
  a = contenders['bigjax']
  check_same_model(a, contenders['pytorch'].model, batches.take(1)[0], log)

  warmup = batches.take(args.warmup_steps)  # torch.compile compiles here; XLA compiled in build
  for name, runner in contenders.items():
    seconds, loss = timed(runner, warmup)
    log(f'warmup {name}: {seconds:.1f} s, loss {loss:.4f}')

  tokens_per_step = a.s.batch_size * config.data.seq_len
  flops_per_token = flops.transformer_flops_per_token(config.model, a.num_params, config.data.seq_len)
  rates = {name: [] for name in contenders}
  for r in range(args.rounds):
    round_batches = batches.take(args.steps_per_round)
    parts = []
    for name, runner in contenders.items():  # interleaved: drifting machine load hits every contender
      seconds, loss = timed(runner, round_batches)
      rates[name].append(tokens_per_step * len(round_batches) / seconds)
      parts.append(f'{name} {rates[name][-1]:7.1f} tok/s ({seconds / len(round_batches):.2f} s/step, '
                   f'{rates[name][-1] * flops_per_token / 1e9:.1f} GFLOP/s, loss {loss:.4f})')
    ratio = rates['bigjax'][-1] / rates['pytorch'][-1]
    log(f'round {r + 1}/{args.rounds}: ' + ' | '.join(parts) + f' | ratio {ratio:.3f}')

  median = {name: statistics.median(values) for name, values in rates.items()}
  result = {'bigjax_tokens_per_s': round(median['bigjax'], 2),
            'pytorch_tokens_per_s': round(median['pytorch'], 2),
            'ratio': round(median_ratio(rates['bigjax'], rates['pytorch']), 4),
            'ratio_of_median_rates': round(median['bigjax'] / median['pytorch'], 4)}
  if args.compile:
    result['pytorch_compile_tokens_per_s'] = round(median['pytorch_compile'], 2)
  # Model FLOPs (6 per parameter per token, plus attention), the same count for every contender.
  result.update({f'{name}_gflops': round(rate * flops_per_token / 1e9, 2) for name, rate in median.items()})
  result.update(rounds=args.rounds, steps_per_round=args.steps_per_round, warmup_steps=args.warmup_steps,
                threads=args.threads)
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
