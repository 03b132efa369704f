"""bigjax's LSTM text classifier train step against the tutorial's PyTorch model, on CPU (issue #5).

  python benchmarks/lstm_vs_pytorch.py [--rounds 5] [--steps_per_round 5] [--threads N] [--scan]

The tutorial's model: Embedding(10000, 100) -> LSTM(100, 200, batch_first) -> Linear(200, 2) on the
final hidden state, cross-entropy, Adam(lr 1e-3), batch 64, sequence length 256, float32.

  A  bigjax: LSTMClassifier(2, vocab_size=10000, embed_dim=100, hidden=200, pooling='last'), optax
     adam(1e-3), softmax cross-entropy, one jax.jit step with params and optimizer state donated.
     On CPU its LSTM layer runs in C++ (bigjax/cpu/lstm_cpu.cc).
  B  PyTorch, eager: the tutorial's model, torch.optim.Adam.

  C  (--scan) A with cpu_kernel=False: the same layer as XLA's lax.scan, what runs where the C++
     kernel cannot be built. Same weights and batches, so its losses match A's.

B starts from A's initial weights (the script checks that both give the same logits), and both
train on the same random token batches (ids 1..9999; 0, the pad id, never occurs), so their
per-round losses should agree. Runs are interleaved A B A B ..., each round timing
--steps_per_round steps after --warmup_steps untimed ones. The summary: each contender's median
rate, and `ratio`, the median of the rounds' bigjax / pytorch ratios (lm_vs_pytorch.median_ratio).
The last stdout line is JSON: {"bigjax_steps_per_s": ..., "pytorch_steps_per_s": ..., "ratio": ...,
"ratio_of_median_rates": ...}, plus "scan_steps_per_s" and "scan_ratio" (the median of the rounds'
scan / pytorch) with --scan.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigjax import cpu  # noqa: E402, I001
cpu.keep_freed_memory_on_cpu()  # glibc's malloc keeps freed memory, as `bigjax.main` sets it: before any
# library starts threads (bigjax/cpu/heap.py), so both contenders share it

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lm_vs_pytorch import median_ratio, set_threads  # noqa: E402  the same threads for both, before jax
from torch import nn  # noqa: E402

VOCAB, EMBED, HIDDEN, CLASSES, BATCH, LENGTH, LR = 10000, 100, 200, 2, 64, 256, 1e-3


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds; the summary is their median')
  parser.add_argument('--steps_per_round', type=int, default=5, help='timed steps per contender per round')
  parser.add_argument('--warmup_steps', type=int, default=3, help='untimed steps per contender first')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='intra-op threads for both XLA and PyTorch (default: all cores)')
  parser.add_argument('--seed', type=int, default=0, help='seed of the weights and the random batches')
  parser.add_argument('--scan', action='store_true',
                      help="also time bigjax's XLA scan LSTM (cpu_kernel=False), the C++ kernel's fallback")
  args = parser.parse_args(argv)
  if min(args.rounds, args.steps_per_round, args.warmup_steps, args.threads) < 1:
    parser.error('--rounds, --steps_per_round, --warmup_steps and --threads must be >= 1')
  return args


class Bigjax:
  def __init__(self, seed: int, cpu_kernel: bool = True):
    import flax.linen as fnn
    import jax
    import optax

    from bigjax.models.lstm import LSTMClassifier
    self.jax = jax
    self.model = LSTMClassifier(CLASSES, vocab_size=VOCAB, embed_dim=EMBED, hidden=HIDDEN, pooling='last',
                                cpu_kernel=cpu_kernel)
    variables = self.model.init(jax.random.key(seed), np.zeros((BATCH, LENGTH), np.int32))
    self.params = fnn.meta.unbox(variables['params'])
    optimizer = optax.adam(LR)
    self.opt_state = optimizer.init(self.params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens, labels):
      def loss_fn(p):
        logits = self.model.apply({'params': p}, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    self.step = step.lower(self.params, self.opt_state, np.zeros((BATCH, LENGTH), np.int32),
                           np.zeros(BATCH, np.int32)).compile()

  def logits(self, tokens):
    return np.asarray(self.jax.jit(self.model.apply)({'params': self.params}, tokens))

  def run(self, batches) -> float:
    for tokens, labels in batches:
      self.params, self.opt_state, loss = self.step(self.params, self.opt_state, tokens, labels)
    return float(loss)  # waits for the last step


class Tutorial(nn.Module):
  def __init__(self):
    super().__init__()
    self.embedding = nn.Embedding(VOCAB, EMBED)
    self.lstm = nn.LSTM(EMBED, HIDDEN, batch_first=True)
    self.fc = nn.Linear(HIDDEN, CLASSES)

  def forward(self, tokens):
    _, (h, _) = self.lstm(self.embedding(tokens))
    return self.fc(h[-1])

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """bigjax's weights; both keep the gates in torch's order (input, forget, cell, output)."""
    def put(tensor, array):
      tensor.copy_(torch.from_numpy(np.array(array, np.float32)))
    lstm = params['lstm_0_forward']
    put(self.embedding.weight, params['embed']['embedding'])
    put(self.lstm.weight_ih_l0, lstm['input_kernel'].T)
    put(self.lstm.weight_hh_l0, lstm['recurrent_kernel'].T)
    put(self.lstm.bias_ih_l0, lstm['bias'])
    self.lstm.bias_hh_l0.zero_()
    put(self.fc.weight, params['head']['kernel'].T)
    put(self.fc.bias, params['head']['bias'])


class Torch:
  def __init__(self, model: Tutorial):
    self.model, self.optimizer = model, torch.optim.Adam(model.parameters(), lr=LR)

  def run(self, batches) -> float:
    for tokens, labels in batches:
      loss = F.cross_entropy(self.model(torch.from_numpy(tokens).long()), torch.from_numpy(labels).long())
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss.item()


def main(argv=None) -> dict:
  args = parse_args(argv)
  set_threads(args.threads)
  log = functools.partial(print, flush=True)
  import jax
  load_start = os.getloadavg()  # a busy machine slows PyTorch's threads far more than XLA's
  log(f'threads: {args.threads}; jax {jax.__version__}, torch {torch.__version__}; load average at start: '
      f'{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}')
  rng = np.random.default_rng(args.seed)

  def take(n):  # ids 1..9999: no padding; labels 0/1
    return [(rng.integers(1, VOCAB, (BATCH, LENGTH), dtype=np.int32),
             rng.integers(0, CLASSES, BATCH, dtype=np.int32)) for _ in range(n)]

  start = time.perf_counter()
  a = Bigjax(args.seed)
  model = Tutorial()
  model.load_flax(jax.device_get(a.params))
  tokens = take(1)[0][0]
  with torch.no_grad():
    expected = model(torch.from_numpy(tokens).long()).numpy()
  error = float(np.abs(a.logits(tokens) - expected).max() / np.abs(expected).max())
  log(f'check: max |logits bigjax - pytorch| / max |logits| = {error:.2e}')
  from bigjax.cpu import lstm  # built and loaded already by Bigjax's first trace
  log('bigjax LSTM layer: ' + ('C++ (bigjax/cpu/lstm_cpu.cc)' if lstm.load()
                               else 'lax.scan: the C++ could not be built (see the warning above)'))
  if error > 1e-4:
    raise SystemExit('bigjax and the PyTorch model disagree: they are not the same model')
  contenders = {'bigjax': a, 'pytorch': Torch(model)}
  if args.scan:
    contenders['scan'] = Bigjax(args.seed, cpu_kernel=False)
  warmup = take(args.warmup_steps)
  for name, runner in contenders.items():  # to steady state (bigjax compiled in its constructor)
    t = time.perf_counter()
    loss = runner.run(warmup)
    log(f'warmup {name}: {time.perf_counter() - t:.1f} s, loss {loss:.4f}')
  log(f'setup, compile and warmup: {time.perf_counter() - start:.1f} s')

  rates = {name: [] for name in contenders}
  for r in range(args.rounds):
    batches, parts = take(args.steps_per_round), []
    for name, runner in contenders.items():  # interleaved: drifting machine load hits both
      t = time.perf_counter()
      loss = runner.run(batches)
      rates[name].append(len(batches) / (time.perf_counter() - t))
      parts.append(f'{name} {rates[name][-1]:.3f} steps/s (loss {loss:.4f})')
    ratio = rates['bigjax'][-1] / rates['pytorch'][-1]
    log(f'round {r + 1}/{args.rounds}: ' + ' | '.join(parts) + f' | ratio {ratio:.3f}')
  load_end = os.getloadavg()
  log(f'load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}')

  median = {name: statistics.median(values) for name, values in rates.items()}
  result = {'bigjax_steps_per_s': round(median['bigjax'], 4),
            'pytorch_steps_per_s': round(median['pytorch'], 4),
            'ratio': round(median_ratio(rates['bigjax'], rates['pytorch']), 4),
            'ratio_of_median_rates': round(median['bigjax'] / median['pytorch'], 4)}
  if args.scan:
    result.update(scan_steps_per_s=round(median['scan'], 4),
                  scan_ratio=round(median_ratio(rates['scan'], rates['pytorch']), 4))
  result.update(rounds=args.rounds, steps_per_round=args.steps_per_round, warmup_steps=args.warmup_steps,
                threads=args.threads, loadavg_start=round(load_start[0], 2),
                loadavg_end=round(load_end[0], 2))
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
