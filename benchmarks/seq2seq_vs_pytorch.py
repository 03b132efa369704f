"""bigjax's encoder-decoder train step against the same model as a plain PyTorch nn.Transformer, on CPU.

  pip install -r benchmarks/requirements.txt
  python benchmarks/seq2seq_vs_pytorch.py [--rounds 5] [--steps_per_round 5] [--threads N] [--compile]

The shape is experiments/translate.py:offline (3 + 3 layers x 256, 4 heads, GELU MLP 4x, LayerNorm,
pre-norm, one embedding shared by source and target that also makes the logits, SentencePiece
vocabulary of 4096, source and target length 64, batch 64), float32, AdamW (lr 2e-3, weight decay
0.01, constant lr, no clipping), with four changes so that PyTorch's stock layers are the same model:

  - learned positions on both sides (model.positions='learned'; the experiment uses RoPE on the
    self-attention, which nn.Transformer has no place for; a learned table is a lookup and an add);
  - dropout 0 (model.dropout; the experiment's small size has none either; masks would differ);
  - label smoothing 0 (task.label_smoothing; the experiment uses 0.1): plain cross-entropy;
  - no pointer-generator head (model.pointer; the experiment has one): plain tied logits.

Both sides train on the same random token batches (ids of real tokens, no padding, full width):

  A  bigjax: train.setup + train.compile_train_step from that config, the executable that
     `python -m bigjax.main` runs for it (its step also computes accuracy and grad norm).
  B  PyTorch, eager: torch.nn.Transformer(norm_first=True, bias=False, activation GELU (tanh),
     batch_first=True) with its LayerNorms given back their biases (bigjax's have them), an
     nn.Embedding for tokens and one per side for positions, tied logits, torch.optim.AdamW.
  C  (--compile) B under torch.compile.

bigjax's setup reads the experiment's data set (Debian en-de, prepared by `python -m bigjax.main
--config=experiments/translate.py:offline`, or in --data_dir) for its shapes and tokenizer; the
timed batches are random. B and C start from A's initial weights, and the script first checks that
A and B give the same logits on one batch, so the comparison is between one model. Runs are
interleaved A B (C) A B (C) ..., each round timing --steps_per_round steps after compilation,
--warmup_steps untimed steps and --warmup_rounds untimed rounds (the heap's steady size; each round's
log line has its CPU seconds and page faults per step). The summary: each contender's median rate
in target tokens per second (as many source tokens go in beside them), and `ratio`, the median of
the rounds' bigjax / pytorch ratios (`ratio_of_median_rates` beside it); >1: bigjax is faster. The last
stdout line is JSON:
  {"bigjax_tokens_per_s": ..., "pytorch_tokens_per_s": ..., "ratio": ..., "ratio_of_median_rates": ..., ...}
"""

import argparse
import copy
import functools
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # `python benchmarks/seq2seq_vs_pytorch.py` from anywhere
from bigjax import cpu  # noqa: E402, I001
from bigjax.cpu import heap  # noqa: E402
if __name__ == '__main__':
  heap.restart_with_huge_pages()  # the heap on huge pages for both contenders (bigjax/cpu/heap.py)
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
  parser.add_argument('--data_dir', default=None,
                      help="TFDS data dir holding debian_translate/en-de for bigjax's setup (default: the "
                           "experiment's, where `python -m bigjax.main` prepares it)")
  parser.add_argument('--batch', type=int, default=0, help="batch size (default: the experiment's, 64)")
  parser.add_argument('--length', type=int, default=64,
                      help='source and target length, both sides (not 64: the data set is tokenized again, '
                           'once, for setup)')
  parser.add_argument('--seed', type=int, default=0, help='seed of the random token batches')
  parser.add_argument('--warmup_steps', type=int, default=3,
                      help='untimed steps per contender before the rounds, to reach steady state (heap '
                           'grown, caches and thread pools warm; torch.compile compiles in the first)')
  parser.add_argument('--warmup_rounds', type=int, default=2,
                      help='untimed interleaved rounds after the warmup steps, exactly like the timed ones: '
                           "XLA allocates each queued step's scratch space when the step is dispatched, so "
                           'the heap reaches its size for a round of queued steps, beside the other '
                           "contender's allocations, only in a round; the pages it adds then are faulted "
                           'in, which would be timed')
  args = parser.parse_args(argv)
  if min(args.rounds, args.steps_per_round, args.threads, args.warmup_steps, args.length) < 1:
    parser.error('--rounds, --steps_per_round, --threads, --warmup_steps and --length must be >= 1')
  if args.warmup_rounds < 0:
    parser.error('--warmup_rounds must be >= 0')
  if args.batch < 0:
    parser.error('--batch must be >= 1 (or 0: the experiment\'s)')
  return args


def set_threads(n: int) -> None:
  """The same number of compute threads for both frameworks. Must run before jax is imported
  (benchmarks/lm_vs_pytorch.py says why PJRT_NPROC, not an XLA flag)."""
  if 'jax' in sys.modules:
    raise RuntimeError('set_threads must run before jax is imported')
  os.environ['PJRT_NPROC'] = str(n)
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=true').strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  torch.set_num_threads(n)


# --------------------------------------------------------------------------- A: bigjax

def experiment_config(name: str, variant: str):
  """experiments/<name>.py's get_config(variant), loaded from its file (experiments/ is no package)."""
  spec = importlib.util.spec_from_file_location(f'_{name}', os.path.join(REPO, 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def adamw_like_bigjax(model, lr: float, weight_decay: float):
  """torch AdamW that decays what bigjax's adamw decays: every weight but the norms' scales and the
  biases (optim.decayed)."""
  norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
  named = list(model.named_parameters())
  kept = [p for name, p in named if id(p) in norms or name.endswith('bias')]
  decay = [p for _, p in named if all(p is not k for k in kept)]
  return torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                            {'params': kept, 'weight_decay': 0.0}], lr=lr)


def bigjax_config(args):
  """experiments/translate.py:offline, made the model nn.Transformer can be (see the docstring)."""
  from bigjax.config import validate
  config = experiment_config('translate', 'offline')
  if args.data_dir:
    config.data.data_dir = args.data_dir
  config.data.seq_len = config.data.target_len = args.length
  if args.batch:
    config.train.batch_size = args.batch
  config.model.positions = 'learned'  # nn.Transformer has no RoPE
  config.model.dropout = 0.0
  config.model.pointer = False  # nn.Transformer has no pointer-generator head
  config.task.label_smoothing = 0.0
  # Constant lr, no clipping, as in lm_vs_pytorch.py: "the same on both sides" is simplest to see.
  config.optim.schedule = 'constant'
  config.optim.warmup_steps = 0
  config.optim.clip_norm = 0.0
  config.model.dtype = 'float32'  # what 'auto' picks on CPU; explicit, as the PyTorch side is float32
  validate(config)
  m = config.model
  # The reference below implements exactly this variant; fail loudly if the experiment drifts.
  expected = {'name': 'transformer_seq2seq', 'mlp': 'gelu', 'norm': 'layernorm', 'shared_embedding': True,
              'tied_embedding': True, 'remat': 'none'}
  drifted = {k: m[k] for k, v in expected.items() if m[k] != v}
  if drifted or config.optim.name != 'adamw' or config.task.name != 'seq2seq':
    raise SystemExit(f'translate offline changed ({drifted}, optim {config.optim.name}, '
                     f'task {config.task.name}): update the PyTorch reference to match')
  return config


# --------------------------------------------------------------------------- B: PyTorch

def _index(tree, i):
  return {k: _index(v, i) if isinstance(v, dict) else v[i] for k, v in tree.items()}


def gelu_tanh(x):
  """flax's nn.gelu: the tanh approximation by default."""
  return F.gelu(x, approximate='tanh')


def _with_biased_norms(layer, d_model: int, eps: float):
  """bias=False drops the LayerNorms' biases with the projections'; bigjax's LayerNorms keep theirs."""
  for name in ('norm1', 'norm2', 'norm3'):
    if hasattr(layer, name):
      setattr(layer, name, nn.LayerNorm(d_model, eps=eps))
  return layer


class Seq2Seq(nn.Module):
  """bigjax.models.seq2seq.TransformerSeq2Seq with positions='learned', shared and tied embedding:
  token + position embeddings -> nn.Transformer (pre-norm, final norms on both stacks) -> logits."""

  def __init__(self, *, vocab: int, num_layers: int, num_decoder_layers: int, d_model: int, num_heads: int,
               mlp_hidden: int, max_length: int, pad_id: int, eps: float = 1e-6):  # flax LayerNorm's epsilon
    super().__init__()
    self.pad_id = pad_id
    self.embed = nn.Embedding(vocab, d_model)
    self.source_positions = nn.Embedding(max_length, d_model)
    self.target_positions = nn.Embedding(max_length, d_model)
    # No dropout, no biases in the projections. The activation is a function, not nn.GELU: the layers
    # are deep-copied into the stacks, and TransformerDecoderLayer.__setstate__ (torch 2.13) turns a
    # module activation into F.relu there (it looks for `activation` in __dict__, not in _modules).
    layer = dict(d_model=d_model, nhead=num_heads, dim_feedforward=mlp_hidden, dropout=0.0,
                 activation=gelu_tanh, layer_norm_eps=eps, batch_first=True,
                 norm_first=True, bias=False)
    encoder = nn.TransformerEncoder(_with_biased_norms(nn.TransformerEncoderLayer(**layer), d_model, eps),
                                    num_layers, norm=nn.LayerNorm(d_model, eps=eps),
                                    enable_nested_tensor=False)  # only for padding masks; none here
    decoder = nn.TransformerDecoder(_with_biased_norms(nn.TransformerDecoderLayer(**layer), d_model, eps),
                                    num_decoder_layers, norm=nn.LayerNorm(d_model, eps=eps))
    self.transformer = nn.Transformer(d_model=d_model, nhead=num_heads, custom_encoder=encoder,
                                      custom_decoder=decoder, batch_first=True, norm_first=True)
    self.register_buffer('causal', nn.Transformer.generate_square_subsequent_mask(max_length),
                         persistent=False)

  def logits(self, inputs, decoder_inputs):
    s, t = inputs.shape[1], decoder_inputs.shape[1]
    source = self.embed(inputs) + self.source_positions.weight[:s]
    target = self.embed(decoder_inputs) + self.target_positions.weight[:t]
    # tgt_is_causal with the mask: nn.MultiheadAttention then runs SDPA with is_causal, no mask tensor.
    x = self.transformer(source, target, tgt_mask=self.causal[:t, :t], tgt_is_causal=True)
    return F.linear(x, self.embed.weight)  # tied: the embedding is the unembedding

  def forward(self, inputs, decoder_inputs, targets):
    """Mean cross-entropy over target tokens, padding excluded (bigjax's seq2seq task)."""
    logits = self.logits(inputs, decoder_inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=self.pad_id)

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """Copies a TransformerSeq2Seq's params (numpy, scanned or per-layer) into this model."""
    d = self.embed.embedding_dim

    def put(tensor, array):
      assert tuple(tensor.shape) == tuple(np.shape(array)), (tensor.shape, np.shape(array))
      tensor.copy_(torch.from_numpy(np.array(array, np.float32)))  # a writable copy, as torch wants

    def square(kernel):  # flax (d_model, heads, head_dim) -> torch (out, in)
      return np.asarray(kernel).reshape(d, -1).T

    def layer_params(prefix: str, i: int):  # scan_layers: leaves stacked over layers; else one tree each
      return _index(params[prefix], i) if prefix in params else params[f'{prefix}_{i}']

    def attention(module, query, key, value, out):  # in_proj_weight is q, k and v stacked
      put(module.in_proj_weight, np.concatenate([square(query), square(key), square(value)]))
      put(module.out_proj.weight, np.asarray(out).reshape(-1, d).T)

    def norm(module, tree):
      put(module.weight, tree['scale'])
      put(module.bias, tree['bias'])

    def mlp(layer, tree):
      put(layer.linear1.weight, np.asarray(tree['up']['kernel']).T)
      put(layer.linear2.weight, np.asarray(tree['down']['kernel']).T)

    put(self.embed.weight, params['embed']['embedding'])
    put(self.source_positions.weight, params['source_positions']['embedding'])
    put(self.target_positions.weight, params['target_positions']['embedding'])
    encoder, decoder = self.transformer.encoder, self.transformer.decoder
    for i, layer in enumerate(encoder.layers):
      p = layer_params('encoder', i)
      attention(layer.self_attn, **p['attention'])
      norm(layer.norm1, p['attention_norm'])
      norm(layer.norm2, p['mlp_norm'])
      mlp(layer, p['mlp'])
    norm(encoder.norm, params['encoder_norm'])
    for i, layer in enumerate(decoder.layers):
      p, kv = layer_params('decoder', i), layer_params('memory_kv', i)
      attention(layer.self_attn, **p['attention'])
      # Cross-attention: bigjax projects the memory's keys and values in memory_kv, once per source.
      attention(layer.multihead_attn, p['cross_attention']['query'], kv['key'], kv['value'],
                p['cross_attention']['out'])
      norm(layer.norm1, p['attention_norm'])
      norm(layer.norm2, p['cross_norm'])
      norm(layer.norm3, p['mlp_norm'])
      mlp(layer, p['mlp'])
    norm(decoder.norm, params['decoder_norm'])


class Torch:
  """A plain PyTorch train step: forward, cross-entropy, backward, AdamW."""

  def __init__(self, model: Seq2Seq, lr: float, weight_decay: float, compile_model: bool = False):
    self.model = model.train()  # train mode (dropout is 0): nn.Transformer's inference fast path stays off
    # bigjax's adamw decays every weight but the norms' scales and biases (optim.decayed).
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    decay = [p for p in model.parameters() if id(p) not in norms]
    no_decay = [p for p in model.parameters() if id(p) in norms]
    self.optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                                        {'params': no_decay, 'weight_decay': 0.0}], lr=lr)
    self.loss = torch.compile(model) if compile_model else model

  def run(self, batches) -> float:
    for batch in batches:
      # int64 for embedding and cross_entropy; the conversion of a few thousand ids is noise.
      loss = self.loss(*(torch.from_numpy(batch[k]).long() for k in ('inputs', 'decoder_inputs', 'targets')))
      self.optimizer.zero_grad(set_to_none=True)
      loss.backward()
      self.optimizer.step()
    return loss.item()


# --------------------------------------------------------------------------- the race

class Batches:
  """Random ids of real tokens (no pad, BOS, EOS or unknown, so no padding), full width; every
  contender trains on the same ones. The decoder reads BOS and the target shifted right, as in
  bigjax's data (bigjax/data/pairs.py)."""

  def __init__(self, seed: int, *, batch_size: int, source_len: int, target_len: int, vocab: int,
               first_id: int, bos_id: int):
    self.rng, self.ids, self.bos_id = np.random.default_rng(seed), (first_id, vocab), bos_id
    self.source_shape, self.target_shape = (batch_size, source_len), (batch_size, target_len)

  def take(self, count: int) -> list[dict]:
    batches = []
    for _ in range(count):
      targets = self.rng.integers(*self.ids, self.target_shape, dtype=np.int32)
      bos = np.full((len(targets), 1), self.bos_id, np.int32)
      batches.append({'inputs': self.rng.integers(*self.ids, self.source_shape, dtype=np.int32),
                      'decoder_inputs': np.concatenate([bos, targets[:, :-1]], axis=1), 'targets': targets})
    return batches


def median_ratio(rates: list, reference_rates: list) -> float:
  """The median of the rounds' ratios: each compares two runs seconds apart, so it survives the
  machine's speed drifting between rounds (benchmarks/lm_vs_pytorch.py)."""
  return statistics.median(a / b for a, b in zip(rates, reference_rates, strict=True))


def timed(runner, batches) -> tuple[float, float]:
  start = time.perf_counter()
  loss = runner.run(batches)
  return time.perf_counter() - start, loss


def process_usage() -> tuple[float, int]:
  """(CPU seconds, minor page faults) of the whole process so far. The contenders run one at a time,
  so a run's difference is its own: CPU time is the work done whatever else the machine runs (the
  wall time is not, on a busy one), and the faults are pages the heap took anew."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def interleaved_rounds(contenders: dict, batches, per_step: float, unit: str, args, *, log) -> dict:
  """The protocol's timed part: args.warmup_rounds untimed rounds, then args.rounds rounds in which
  each contender runs the same args.steps_per_round batches in turn (drifting machine load hits every
  contender), one log line per round. Returns the summary: each contender's median rate of `unit`
  (per_step of them a step), `ratio` (the median of the rounds' bigjax / pytorch ratios), the median
  CPU seconds per step (diagnostics: PyTorch's OpenMP threads count their spinning in theirs), and the
  load average at the end."""
  rates = {name: [] for name in contenders}
  cpu_s = {name: [] for name in contenders}
  short = {'tokens': 'tok', 'images': 'img', 'utterances': 'utt'}.get(unit, unit)
  for r in range(-args.warmup_rounds, args.rounds):
    round_batches = batches.take(args.steps_per_round)
    parts, round_rates = [], {}
    for name, runner in contenders.items():
      cpu_start, faults_start = process_usage()
      seconds, loss = timed(runner, round_batches)
      cpu_end, faults_end = process_usage()
      steps = len(round_batches)
      round_rates[name] = per_step * steps / seconds
      if r >= 0:
        rates[name].append(round_rates[name])
        cpu_s[name].append((cpu_end - cpu_start) / steps)
      parts.append(f'{name} {round_rates[name]:7.1f} {short}/s ({seconds / steps:.2f} s/step, '
                   f'cpu {(cpu_end - cpu_start) / steps:.2f} s/step, '
                   f'{(faults_end - faults_start) // steps} faults/step, loss {loss:.4f})')
    ratio = round_rates['bigjax'] / round_rates['pytorch']
    label = f'round {r + 1}/{args.rounds}' if r >= 0 else f'warmup round {r + args.warmup_rounds + 1}'
    log(f'{label}: ' + ' | '.join(parts) + f' | ratio {ratio:.3f}')
  load_end = os.getloadavg()
  log(f'load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}')
  median = {name: statistics.median(values) for name, values in rates.items()}
  result = {f'bigjax_{unit}_per_s': round(median['bigjax'], 3),
            f'pytorch_{unit}_per_s': round(median['pytorch'], 3),
            'ratio': round(median_ratio(rates['bigjax'], rates['pytorch']), 4),
            'ratio_of_median_rates': round(median['bigjax'] / median['pytorch'], 4),
            'bigjax_cpu_s_per_step': round(statistics.median(cpu_s['bigjax']), 3),
            'pytorch_cpu_s_per_step': round(statistics.median(cpu_s['pytorch']), 3)}
  if 'pytorch_compile' in rates:
    result[f'pytorch_compile_{unit}_per_s'] = round(median['pytorch_compile'], 3)
    result['compile_ratio'] = round(median_ratio(rates['bigjax'], rates['pytorch_compile']), 4)
  result['loadavg_end'] = round(load_end[0], 2)
  return result


def build(args, log):
  """The contenders, all at bigjax's initial weights, and the batches they share."""
  config = bigjax_config(args)
  a = Bigjax(config)
  m, tokenizer = config.model, a.s.dataset.tokenizer
  log(f'bigjax: {a.num_params:,} parameters, scan_layers={m.scan_layers}, remat={m.remat}, '
      f'cpu_matmul={config.train.cpu_matmul}; setup + init + compile {a.compile_s:.1f} s')
  vocab = tokenizer.vocab_size
  model = Seq2Seq(vocab=vocab, num_layers=m.num_layers,
                  num_decoder_layers=m.num_decoder_layers or m.num_layers, d_model=m.d_model,
                  num_heads=m.num_heads, mlp_hidden=int(m.mlp_ratio * m.d_model),
                  max_length=a.s.model.max_length, pad_id=tokenizer.pad_id)
  model.load_flax(a.jax.device_get(a.state.params))
  num_params = sum(p.numel() for p in model.parameters())
  if num_params != a.num_params:
    raise SystemExit(f'the PyTorch model has {num_params:,} parameters, bigjax {a.num_params:,}')

  compiled_model = copy.deepcopy(model) if args.compile else None  # copied before any training
  contenders = {'bigjax': a, 'pytorch': Torch(model, config.optim.lr, config.optim.weight_decay)}
  if args.compile:
    contenders['pytorch_compile'] = Torch(compiled_model, config.optim.lr, config.optim.weight_decay,
                                          compile_model=True)
  first_id = max(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, getattr(tokenizer, 'unk_id', 0)) + 1
  batches = Batches(args.seed, batch_size=a.s.batch_size, source_len=config.data.seq_len,
                    target_len=config.data.target_len, vocab=vocab, first_id=first_id,
                    bos_id=tokenizer.bos_id)
  if set(batches.take(1)[0]) != a.batch_keys:
    raise SystemExit(f'bigjax batches hold {sorted(a.batch_keys)}: update Batches to match')
  return config, contenders, batches


def check_same_model(a: Bigjax, model: Seq2Seq, batch: dict, log) -> None:
  """Same weights, same tokens: the logits must agree to float32 rounding, or we race two models."""
  with torch.no_grad():
    expected = model.logits(torch.from_numpy(batch['inputs']).long(),
                            torch.from_numpy(batch['decoder_inputs']).long()).numpy()
  error = float(np.abs(a.logits(batch) - expected).max() / np.abs(expected).max())
  log(f'check: max |logits bigjax - pytorch| / max |logits| = {error:.2e}')
  if error > 1e-4:
    raise SystemExit('bigjax and the PyTorch reference disagree: they are not the same model')


def main(argv=None) -> dict:
  args = parse_args(argv)
  set_threads(args.threads)
  log = functools.partial(print, flush=True)
  import jax
  load_start = os.getloadavg()  # a busy machine slows PyTorch's threads far more than XLA's
  log(f'threads: {args.threads} (XLA via PJRT_NPROC, torch.set_num_threads); '
      f'jax {jax.__version__}, torch {torch.__version__}; load average at start: '
      f'{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}')
  config, contenders, batches = build(args, log)
  a = contenders['bigjax']
  check_same_model(a, contenders['pytorch'].model, batches.take(1)[0], log)

  warmup = batches.take(args.warmup_steps)  # torch.compile compiles here; XLA compiled in build
  for name, runner in contenders.items():
    seconds, loss = timed(runner, warmup)
    log(f'warmup {name}: {seconds:.1f} s, loss {loss:.4f}')

  tokens_per_step = a.s.batch_size * config.data.target_len  # target tokens: the task's unit
  result = interleaved_rounds(contenders, batches, tokens_per_step, 'tokens', args, log=log)
  result.update(rounds=args.rounds, steps_per_round=args.steps_per_round, warmup_steps=args.warmup_steps,
                warmup_rounds=args.warmup_rounds,
                threads=args.threads, batch=a.s.batch_size, length=args.length,
                loadavg_start=round(load_start[0], 2))
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
