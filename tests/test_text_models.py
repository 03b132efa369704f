"""Text classifiers: the masked LSTM (against flax's LSTMCell), every pooling mode, the
bidirectional path, padding never changing a prediction, learning a small synthetic task, and the
C++ layer training the same on 8 simulated devices as on one."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigjax.models.lstm import LSTM, LSTMClassifier
from bigjax.models.transformer import TransformerClassifier
from helpers import REPO, load_script


def _init(model, tokens):
  return nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])


def test_the_lstm_computes_what_flax_lstmcell_computes():
  x = jax.random.normal(jax.random.key(1), (3, 7, 5))
  cell = nn.RNN(nn.LSTMCell(4))
  flax_params = cell.init(jax.random.key(2), x)['params']['cell']
  gates = 'ifgo'  # flax's names for the input, forget, cell and output gates
  ours = {'input_kernel': jnp.concatenate([flax_params[f'i{g}']['kernel'] for g in gates], axis=1),
          'recurrent_kernel': jnp.concatenate([flax_params[f'h{g}']['kernel'] for g in gates], axis=1),
          'bias': jnp.concatenate([flax_params[f'h{g}']['bias'] for g in gates])}
  states, last = LSTM(4).apply({'params': ours}, x, jnp.ones((3, 7), bool))
  expected = cell.apply({'params': {'cell': flax_params}}, x)
  np.testing.assert_allclose(states, expected, atol=1e-5)
  np.testing.assert_allclose(last, expected[:, -1], atol=1e-5)


def test_the_backward_direction_reads_the_sequence_from_its_end():
  x = jax.random.normal(jax.random.key(1), (2, 6, 5))
  valid = jnp.ones((2, 6), bool)
  params = nn.meta.unbox(LSTM(4).init(jax.random.key(0), x, valid)['params'])
  backward_states, backward_last = LSTM(4, reverse=True).apply({'params': params}, x, valid)
  forward_states, forward_last = LSTM(4).apply({'params': params}, x[:, ::-1], valid)
  np.testing.assert_allclose(backward_last, forward_last, atol=1e-6)
  np.testing.assert_allclose(backward_states, forward_states[:, ::-1], atol=1e-6)


def test_time_major_is_the_same_layer_transposed():
  x = jax.random.normal(jax.random.key(1), (3, 6, 5))
  valid = jnp.arange(6) < jnp.array([[6], [2], [4]])  # right padding, of three lengths
  params = nn.meta.unbox(LSTM(4).init(jax.random.key(0), x, valid)['params'])
  states, last = LSTM(4).apply({'params': params}, x, valid)
  states_tm, last_tm = LSTM(4, time_major=True).apply({'params': params}, x.swapaxes(0, 1), valid.T)
  np.testing.assert_array_equal(states_tm.swapaxes(0, 1), states)
  np.testing.assert_array_equal(last_tm, last)


CLASSIFIERS = [
    LSTMClassifier(3, vocab_size=30, embed_dim=8, hidden=6, pooling='last'),
    LSTMClassifier(3, vocab_size=30, embed_dim=8, hidden=6, pooling='mean'),
    LSTMClassifier(3, vocab_size=30, embed_dim=8, hidden=6, pooling='max'),
    LSTMClassifier(3, vocab_size=30, embed_dim=8, hidden=6, num_layers=2, bidirectional=True, pooling='last'),
    TransformerClassifier(3, vocab_size=30, d_model=16, num_heads=2, pooling='mean', dropout=0.0),
    TransformerClassifier(3, vocab_size=30, d_model=16, num_heads=2, pooling='max', positions='rope',
                          dropout=0.0),
]


@pytest.mark.parametrize('model', CLASSIFIERS, ids=lambda m: f'{type(m).__name__}-{m.pooling}')
def test_padding_never_changes_a_prediction(model):
  tokens = jax.random.randint(jax.random.key(3), (4, 9), 1, 30)  # 0 is the pad id
  params = _init(model, tokens)
  apply = jax.jit(model.apply)
  logits = apply({'params': params}, tokens)
  pads = jnp.zeros((4, 5), tokens.dtype)
  for padded in (jnp.concatenate([tokens, pads], 1), jnp.concatenate([pads, tokens], 1)):
    np.testing.assert_allclose(apply({'params': params}, padded), logits, atol=2e-5)
  # ...while a real token does change it.
  assert not np.allclose(apply({'params': params}, tokens.at[:, 4].set(7)), logits, atol=1e-4)


def test_each_pooling_mode_pools_real_tokens_only():
  tokens = jnp.array([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
  base = LSTMClassifier(2, vocab_size=30, embed_dim=8, hidden=6)
  params = _init(base, tokens)
  embedded = params['embed']['embedding'][tokens]
  states, last = LSTM(6).apply({'params': params['lstm_0_forward']}, embedded, tokens != 0)
  head = lambda v: v @ params['head']['kernel'] + params['head']['bias']  # noqa: E731
  expected = {'last': jnp.stack([states[0, 2], states[1, 1]]),
              'mean': jnp.stack([states[0, :3].mean(0), states[1, :2].mean(0)]),
              'max': jnp.stack([states[0, :3].max(0), states[1, :2].max(0)])}
  np.testing.assert_allclose(last, expected['last'], atol=1e-6)
  for mode, pooled in expected.items():
    model = LSTMClassifier(2, vocab_size=30, embed_dim=8, hidden=6, pooling=mode)
    np.testing.assert_allclose(model.apply({'params': params}, tokens), head(pooled), atol=1e-5)


def test_word_dropout_zeroes_whole_embeddings_in_training_only():
  """The LSTM reads each token's embedding or, for about word_dropout of them, zeros."""
  tokens = jax.random.randint(jax.random.key(3), (40, 50), 1, 30)
  model = LSTMClassifier(2, vocab_size=30, embed_dim=8, hidden=6, word_dropout=0.4)
  params = _init(model, tokens)
  embedded = params['embed']['embedding'][tokens]
  seen = []

  def record_lstm_inputs(next_fun, args, kwargs, context):
    if isinstance(context.module, LSTM):  # (T, B, E) when time-major, as the classifier runs it
      seen.append(args[0].swapaxes(0, 1) if context.module.time_major else args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record_lstm_inputs):
    model.apply({'params': params}, tokens, train=True, rngs={'dropout': jax.random.key(1)})
    model.apply({'params': params}, tokens)
  trained, evaluated = seen
  np.testing.assert_array_equal(evaluated, embedded)
  zeroed = np.all(trained == 0, axis=-1)
  np.testing.assert_array_equal(trained[~zeroed], embedded[~zeroed])  # kept words are not rescaled
  assert 0.35 < zeroed.mean() < 0.45, zeroed.mean()  # 2,000 tokens at p = 0.4


@pytest.mark.parametrize('model', [
    LSTMClassifier(2, vocab_size=12, embed_dim=16, hidden=32, bidirectional=True, pooling='max'),
    pytest.param(TransformerClassifier(2, vocab_size=12, d_model=32, num_heads=2, dropout=0.0, pooling='max'),
                 marks=pytest.mark.slow)],  # CI's budget
    ids=['lstm', 'transformer'])
def test_learns_whether_a_token_occurs(model):
  """Label 1 iff token 3 occurs in a variable-length sequence: needs the whole sequence, ignores pads."""
  rng = np.random.default_rng(0)

  def batch(n):
    tokens = rng.integers(4, 12, (n, 12))
    labels = rng.integers(0, 2, n)
    where = rng.integers(0, 12, n)
    tokens[labels == 1, where[labels == 1]] = 3
    lengths = np.maximum(rng.integers(4, 13, n), where + 1)
    tokens[np.arange(12)[None, :] >= lengths[:, None]] = 0
    return jnp.asarray(tokens), jnp.asarray(labels)

  params = _init(model, batch(2)[0])
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, tokens, labels):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply({'params': p}, tokens), labels).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(300):
    params, opt_state = step(params, opt_state, *batch(32))
  tokens, labels = batch(500)
  accuracy = float(jnp.mean(jnp.argmax(model.apply({'params': params}, tokens), -1) == labels))
  assert accuracy > 0.95


def _reference_lstm(params, x, valid, reverse):
  """The plain masked LSTM, left to autodiff: what LSTM's custom gradient must reproduce."""
  w, u, b = params['input_kernel'], params['recurrent_kernel'], params['bias']

  def step(carry, inputs):
    h, c = carry
    x_t, real = inputs
    i, f, g, o = jnp.split(x_t @ w + b + h @ u, 4, axis=-1)
    c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_next = jax.nn.sigmoid(o) * jnp.tanh(c_next)
    real = real[:, None]
    h, c = jnp.where(real, h_next, h), jnp.where(real, c_next, c)
    return (h, c), h

  zeros = jnp.zeros((x.shape[0], u.shape[0]))
  (last, _), states = jax.lax.scan(step, (zeros, zeros), (x.swapaxes(0, 1), valid.T), reverse=reverse)
  return states.swapaxes(0, 1), last


KERNELS = pytest.mark.parametrize('cpu_kernel', [True, False], ids=['cpp', 'scan'])


@KERNELS
@pytest.mark.parametrize('reverse', [False, True], ids=['forward', 'backward'])
def test_the_lstm_gradient_is_autodiffs_of_the_plain_scan(reverse, cpu_kernel):
  """Padding in the middle, at the start and at the end of sequences; loss on every state and the last."""
  keys = jax.random.split(jax.random.key(4), 4)
  x = jax.random.normal(keys[0], (4, 11, 5))
  valid = jnp.array([[1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1],   # a gap in the middle
                     [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],   # padded at the start
                     [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],   # ...and at the end
                     [0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0]], bool)  # both ends and a gap
  model = LSTM(6, reverse=reverse, cpu_kernel=cpu_kernel)
  params = nn.meta.unbox(model.init(keys[1], x, valid)['params'])
  state_weights, last_weights = jax.random.normal(keys[2], (4, 11, 6)), jax.random.normal(keys[3], (4, 6))

  def loss(run):
    return lambda p, x: sum(jnp.sum(w * v) for w, v in zip((state_weights, last_weights), run(p, x)))

  ours = jax.jit(jax.value_and_grad(loss(lambda p, x: model.apply({'params': p}, x, valid)), (0, 1)))
  reference = jax.jit(jax.value_and_grad(loss(lambda p, x: _reference_lstm(p, x, valid, reverse)), (0, 1)))
  (value, grads), (expected_value, expected_grads) = ours(params, x), reference(params, x)
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  # Same inputs, same bits.
  again = ours(params, x)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves((value, grads)), jax.tree.leaves(again)))


@KERNELS
def test_a_two_layer_bidirectional_lstm_gradient_is_autodiffs_of_the_plain_scan(cpu_kernel):
  """LSTMClassifier's stacking written out: both directions read x, the next layer their concatenation."""
  keys = jax.random.split(jax.random.key(5), 6)
  x = jax.random.normal(keys[0], (3, 10, 5))
  valid = jnp.ones((3, 10), bool).at[0, 6:].set(False).at[1, :3].set(False).at[2, 4:6].set(False)
  layers = [tuple(LSTM(width, reverse, cpu_kernel) for reverse in (False, True)) for width in (6, 4)]
  inits = zip(layers, (keys[1:3], keys[3:5]), (5, 12))  # (modules, keys, input width) per layer
  params = [tuple(nn.meta.unbox(m.init(k, jnp.zeros((3, 10, width)), valid)['params'])
                  for m, k in zip(pair, ks)) for pair, ks, width in inits]
  weights = jax.random.normal(keys[5], (3, 10, 8))

  def loss(run):
    def f(params, x):
      for pair, layer_params in zip(layers, params):
        x = jnp.concatenate([run(m, p, x)[0] for m, p in zip(pair, layer_params)], axis=-1)
      return jnp.sum(jnp.where(valid[..., None], x * weights, 0))
    return f

  ours = jax.jit(jax.grad(loss(lambda m, p, x: m.apply({'params': p}, x, valid)), (0, 1)))(params, x)
  expected = jax.jit(jax.grad(loss(lambda m, p, x: _reference_lstm(p, x, valid, m.reverse)), (0, 1)))(
      params, x)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()),
                               err_msg=jax.tree_util.keystr(path))


def _lstm_step_hlo(cpu_kernel):
  model = LSTMClassifier(3, vocab_size=30, embed_dim=8, hidden=6, cpu_kernel=cpu_kernel)
  tokens = jnp.ones((2, 5), jnp.int32)
  params = _init(model, tokens)
  grad = jax.jit(jax.grad(lambda p: model.apply({'params': p}, tokens).sum()))
  return grad.lower(params).compile().as_text()


def test_on_cpu_the_lstm_runs_the_cpp_kernel_unless_told_not_to():
  """A silent fall-back to the scan (the C++ not built, not registered) would fail here."""
  assert jax.default_backend() == 'cpu'
  with_kernel, without = _lstm_step_hlo(True), _lstm_step_hlo(False)
  assert 'BigjaxLstmForward' in with_kernel and 'BigjaxLstmBackward' in with_kernel
  assert 'BigjaxLstmForward' not in without and 'while' in without


def test_the_kernel_gives_a_row_the_same_bits_whatever_else_is_in_the_batch():
  """Threads split the batch, so a row's states and input gradient must not depend on the split."""
  keys = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(keys[0], (19, 9, 5))
  valid = jax.random.bernoulli(keys[1], 0.8, (19, 9))
  model = LSTM(20)  # 4H = 80: a partial register strip
  params = nn.meta.unbox(model.init(keys[2], x, valid)['params'])

  @jax.jit
  def states_and_input_grad(x, valid):
    states, last = model.apply({'params': params}, x, valid)
    return states, last, jax.grad(lambda x: jnp.sum(jnp.sin(model.apply({'params': params}, x, valid)[0])))(x)

  whole = states_and_input_grad(x, valid)
  for rows in (slice(3, 4), slice(0, 8), slice(5, 19)):
    part = states_and_input_grad(x[rows], valid[rows])
    for got, want in zip(part, whole):
      np.testing.assert_array_equal(got, want[rows])


def test_the_kernel_gives_the_same_bits_while_threads_trade_rows():
  """Three rows on two threads: the thread with one row finishes first and takes a row from the other
  in mid-sequence (lstm_cpu.cc's RunRows), at a step that depends on timing. Nothing may show it:
  the gradients equal the scan's, and repeated calls give the same bits."""
  keys = jax.random.split(jax.random.key(7), 4)
  x = jax.random.normal(keys[0], (3, 300, 5))
  valid = jax.random.bernoulli(keys[1], 0.9, (3, 300))
  params = nn.meta.unbox(LSTM(8).init(keys[2], x, valid)['params'])
  weights = jax.random.normal(keys[3], (3, 300, 8))

  def grads(cpu_kernel):
    model = LSTM(8, cpu_kernel=cpu_kernel)
    return jax.jit(jax.grad(lambda p, x: jnp.sum(weights * model.apply({'params': p}, x, valid)[0]), (0, 1)))

  ours, scan = grads(True), grads(False)
  first, expected = ours(params, x), scan(params, x)
  for got, want in zip(jax.tree.leaves(first), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  for _ in range(10):
    again = ours(params, x)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))


@pytest.mark.slow  # a benchmark's harness, not what users run: 28 s of CI
def test_the_kernel_ab_benchmark_tells_a_numerical_change_from_the_same_code(tmp_path):
  """benchmarks/lstm_kernel_ab.py: a copy of lstm_cpu.cc gives ref's bits, one whose tanh rounds
  once more does not, and each gets its timings and ratios."""
  with open(os.path.join(REPO, 'bigjax', 'cpu', 'lstm_cpu.cc')) as f:
    code = f.read()
  assert 'return x * p / q;' in code
  (tmp_path / 'copy.cc').write_text(code)
  (tmp_path / 'tanh.cc').write_text(code.replace('return x * p / q;', 'return x * (p / q);'))
  ab = load_script(os.path.join(REPO, 'benchmarks', 'lstm_kernel_ab.py'))
  summary = ab.main([str(tmp_path / 'copy.cc'), str(tmp_path / 'tanh.cc'), '--rounds', '1'])
  same_bits = [summary[name]['same_bits'] for name in ('ref', 'control', 'copy', 'tanh')]
  assert same_bits == [True, True, True, False]
  assert summary['ref']['forward_ratio'] == summary['ref']['backward_ratio'] == 1
  assert all(s['forward_ms'] > 0 and s['backward_ms'] > 0 for s in summary.values())


def test_without_a_compiler_the_kernel_is_skipped_with_a_warning(monkeypatch, tmp_path, caplog):
  from bigjax.cpu import lstm, native
  monkeypatch.setenv('BIGJAX_CACHE_DIR', str(tmp_path))  # nothing cached: it must build
  monkeypatch.setenv('PATH', str(tmp_path))  # and finds no g++
  assert native.load.__wrapped__('lstm_cpu', lstm.KERNELS) is False
  assert 'could not be built' in caplog.text and list(tmp_path.iterdir()) == []
  # The model then traces the scan, whatever cpu_kernel says.
  monkeypatch.setattr(native, 'load', lambda *_: False)
  assert 'BigjaxLstmForward' not in _lstm_step_hlo(True)


def test_lstm_model_flops_count_every_matmul_xla_cannot_see():
  """XLA's cost analysis sees no FLOPs inside the C++ layer, so MFU uses this count: the tutorial's
  step is 2 x 64 x 256 x (100 + 200) x 800 FLOPs forward, twice that backward (23.6 GFLOP)."""
  import ml_collections

  from bigjax import models
  tutorial = ml_collections.ConfigDict({'name': 'lstm_classifier', 'embed_dim': 100, 'hidden': 200})
  assert models.flops_per_example(tutorial, 0, (256,)) * 64 == 3 * 2 * 64 * 256 * 300 * 800
  stacked = ml_collections.ConfigDict({'name': 'lstm_classifier', 'embed_dim': 8, 'hidden': 6,
                                       'num_layers': 2, 'bidirectional': True})
  # layer 1: two directions over 8 inputs; layer 2: two directions over both directions' 12 states
  assert models.flops_per_example(stacked, 0, (10,)) == 10 * 6 * 4 * 6 * 2 * ((8 + 6) + (12 + 6))


@KERNELS
def test_an_lstm_returning_only_its_last_state_has_the_same_gradients(cpu_kernel):
  """return_states=False (pooling 'last' on the top layer) skips the states' all-zero gradient."""
  keys = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(keys[0], (5, 8, 3))
  valid = jax.random.bernoulli(keys[1], 0.7, (5, 8))
  params = nn.meta.unbox(LSTM(4).init(keys[2], x, valid)['params'])

  def grads(return_states):
    model = LSTM(4, cpu_kernel=cpu_kernel, return_states=return_states)
    return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(model.apply({'params': p}, x, valid)[1])), (0, 1)))(
        params, x)

  for got, want in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('shape', [(1, 1, 1, 1), (0, 4, 3, 2), (5, 0, 3, 2), (9, 17, 33, 17)],
                         ids=['one-of-each', 'no-steps', 'empty-batch', 'odd-sizes'])
def test_the_cpp_layer_matches_the_scan_at_edge_shapes(shape):
  """(B, T, E, H): single units, nothing to run over, and sizes that fill no vector or tile evenly."""
  from bigjax.cpu import lstm as cpu_lstm
  from bigjax.models import lstm
  assert cpu_lstm.load()
  batch, steps, embed, hidden = shape
  keys = jax.random.split(jax.random.key(8), 5)
  x = jax.random.normal(keys[0], (steps, batch, embed))
  valid = jax.random.bernoulli(keys[1], 0.7, (steps, batch))
  weights = (jax.random.normal(keys[2], (embed, 4 * hidden)) * 0.3,
             jax.random.normal(keys[3], (hidden, 4 * hidden)) * 0.3,
             jax.random.normal(keys[4], (4 * hidden,)))

  def value_and_grads(kernel):
    def loss(x, weights):
      states, last = lstm._layer(x, valid, weights, lstm._LayerOptions(False, kernel, True))
      return jnp.sum(jnp.sin(states)) + jnp.sum(last ** 2)
    return jax.jit(jax.value_and_grad(loss, (0, 1)))(x, weights)

  for got, want in zip(jax.tree.leaves(value_and_grads(True)), jax.tree.leaves(value_and_grads(False))):
    scale = max(1.0, float(jnp.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


LSTM_STEPS = '''
import sys
sys.path.insert(0, 'tests')
import jax, numpy as np
import helpers
from experiments import imdb_lstm
config = imdb_lstm.get_config('offline')
config.data.data_dir, config.data.seq_len, config.data.vocab_size = sys.argv[1], 64, 2000
# No dropout: shard_map draws masks per device, so only then can it equal one device.
config.model.update({'embed_dim': 16, 'hidden': 16, 'dropout': 0.0, 'word_dropout': 0.0})
config.train.update({'batch_size': 16, 'steps': 5, 'cpu_matmul': 'xla'})
batches = helpers.lm_batches(config, config.train.steps)
for mode in sys.argv[3:]:
  config.parallel.mode = mode
  losses, params, program = helpers.train_steps(config, batches)
  leaves = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(params)}
  cpp = 'BigjaxLstmForward' in program and 'BigjaxLstmBackward' in program
  np.savez(f'{sys.argv[2]}/{mode}.npz', losses=losses, cpp=cpp, **leaves)
'''


@pytest.mark.slow  # 14 s; CI checks the C++ layer against the scan, and sharding in test_scale.py
def test_the_cpp_lstm_trains_the_same_on_8_devices_as_on_one(data_dir, tmp_path):
  """imdb_lstm:offline shrunk, 5 steps: on one device, and on a data=8 mesh of simulated devices
  both as GSPMD partitions the step (auto) and as explicit data parallelism (shard_map, each device
  running the C++ layer on its own rows, then a pmean)."""
  def run(devices, *modes):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}' if devices > 1 else ''}
    out = tmp_path / str(devices)
    out.mkdir()
    result = subprocess.run([sys.executable, '-c', LSTM_STEPS, data_dir, str(out), *modes], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [dict(np.load(out / f'{mode}.npz')) for mode in modes]

  # One after the other: the first prepares the dataset if no test has yet. (At once they would
  # race to, and on 2 cores gain nothing: XLA keeps both busy.)
  [one] = run(1, 'auto')
  for mode, eight in zip(('auto', 'shard_map'), run(8, 'auto', 'shard_map')):
    assert one['cpp'] and eight['cpp'], mode  # the C++ layer ran, not the scan it falls back to
    assert one['losses'][-1] < one['losses'][0] - 0.02  # it trained
    # Not bitwise: the embeddings' scatter-add (auto) and the pmean of per-device gradients (shard_map)
    # sum in another order, and Adam carries those last-bit differences into every parameter: a few
    # float32 ulps of the loss, weights some 4e-7 apart. A device's 2 rows lost and another's counted
    # twice would put the losses about 1e-2 apart and weights up to 1e-2: far outside these bounds.
    np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-6, err_msg=mode)
    assert eight.keys() == one.keys()
    for name in one.keys() - {'losses', 'cpp'}:
      np.testing.assert_allclose(eight[name], one[name], rtol=0, atol=2e-6, err_msg=f'{mode} {name}')
