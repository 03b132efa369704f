"""Language models: tokenizers, the Transformer's masks, RoPE and KV cache, the LM task,
gradient accumulation, overfitting one batch, sharded equality, and --mode=sample."""

import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigjax import cpu, data, decode, sharding, tasks
from bigjax.config import LOGICAL_RULES
from bigjax.data import pipeline, tokenizers
from bigjax.models.transformer import TransformerLM, rope
from helpers import REPO, lm_batches, read_metrics, run_main, tiny_lm_config, train_steps

TEXT = 'def f(x):\n    return "héllo wörld" + str(x)  # ünïcode ✓\n'


def test_byte_tokenizer_round_trips_and_counts_bytes(tmp_path):
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(TEXT)
  assert tok.decode(ids) == TEXT
  assert tok.token_bytes[ids].sum() == len(TEXT.encode('utf-8'))
  assert tok.token_bytes[[tok.pad_id, tok.bos_id, tok.eos_id]].sum() == 0
  tokenizers.save(tok, str(tmp_path / 'tok'))
  assert tokenizers.load(tmp_path / 'tok').encode(TEXT) == ids


def test_sentencepiece_trains_round_trips_and_caches(tmp_path):
  calls = []

  def texts():
    calls.append(1)
    return [TEXT * 3, 'import os\nprint(os.getcwd())\n' * 5, 'class A:\n    pass\n' * 4] * 20

  tok = tokenizers.get_or_train('sentencepiece', 300, str(tmp_path), texts)
  assert tok.vocab_size == 300 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for text in (TEXT, 'unseen ∑ text with   spaces\n\tand tabs'):  # byte fallback: anything round-trips
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.token_bytes[ids].sum() == len(text.encode('utf-8'))
  assert len(tok.encode('import os\n')) < len('import os\n')  # it learned merges
  again = tokenizers.get_or_train('sentencepiece', 300, str(tmp_path), texts)
  assert calls == [1] and again.encode(TEXT) == tok.encode(TEXT)  # cached, not retrained


def test_rope_preserves_norms_and_depends_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
  at = lambda x, p: rope(x, jnp.array([[p]]))  # noqa: E731
  np.testing.assert_allclose(jnp.linalg.norm(at(q, 7)), jnp.linalg.norm(q), rtol=1e-5)
  score = lambda m, n: float(jnp.sum(at(q, m) * at(k, n)))  # noqa: E731
  assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def _lm(**fields):
  return TransformerLM(num_outputs=50, num_layers=2, d_model=32, num_heads=4, **fields)


def _init(model, tokens):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens)['params'])  # jitted: 10x faster on CPU


def test_causal_mask_hides_the_future_and_padding_is_invisible():
  model = _lm()
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 3, 50)
  params = _init(model, tokens)
  apply = jax.jit(model.apply)
  logits = apply({'params': params}, tokens)
  changed = apply({'params': params}, tokens.at[0, 7].set(4))
  np.testing.assert_array_equal(logits[0, :7], changed[0, :7])  # positions before 7 never see it
  assert not np.allclose(logits[0, 7:], changed[0, 7:])
  # The same prompt left-padded by 3: the pads change nothing.
  padded, valid = decode.left_pad([list(np.asarray(tokens[0]))], pad_id=0)
  padded = np.concatenate([np.zeros((1, 3), np.int32), padded], axis=1)
  valid = np.concatenate([np.zeros((1, 3), bool), valid], axis=1)
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  shifted = apply({'params': params}, padded, positions=positions, valid=valid)
  np.testing.assert_allclose(shifted[0, 3:], logits[0], atol=1e-5)


def test_causal_query_blocks_change_no_number():
  """Chunked causal attention skips the fully masked keys; it must give the one-call result."""
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 3, 50)
  valid = jnp.arange(16)[None, :] >= jnp.array([[0], [5]])  # row 2 is left-padded by 5
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  params = _init(_lm(query_blocks=1), tokens)
  logits = {b: jax.jit(_lm(query_blocks=b).apply)({'params': params}, tokens, positions=positions,
                                                   valid=valid) for b in (1, 2, 4)}
  for b in (2, 4):
    np.testing.assert_allclose(logits[b][valid], logits[1][valid], atol=1e-5)
  assert not np.allclose(logits[1][valid], logits[1][valid][::-1], atol=1e-3)  # the logits say something


@pytest.mark.parametrize('mlp', [pytest.param('gelu', marks=pytest.mark.slow), 'swiglu'])  # CI's budget
def test_remat_policies_recompute_only_what_they_say(mlp):
  """'dots' keeps every matmul's output, 'dots_no_batch' all but the attention's batched ones
  (scores and values, two query blocks: 4 a layer): counted as dot_generals in the gradient's
  program (scanned layers: one layer's body). A matmul hidden from the policy, as behind a
  custom_vjp, would be computed again in backward and counted."""
  tokens = jnp.ones((2, 16), jnp.int32)
  params = _init(_lm(mlp=mlp), tokens)

  def dots(remat):
    loss = lambda p: jnp.sum(_lm(mlp=mlp, remat=remat).apply({'params': p}, tokens))  # noqa: E731
    return str(jax.make_jaxpr(jax.grad(loss))(params)).count('dot_general')
  assert dots('dots') == dots('none')
  assert dots('dots_no_batch') == dots('none') + 4
  assert dots('full') > dots('dots_no_batch')


@pytest.mark.slow  # 10 s, for CI's 15 minutes; every LM test in CI runs the fused matmul on CPU
def test_the_fused_query_key_value_matmul_computes_the_same_model(monkeypatch):
  """The fused projection (CPU) and the three matmuls (elsewhere) share one parameter tree, so a
  checkpoint restores under either, and give the same logits and gradients."""
  model = _lm(num_kv_heads=2)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)

  def run(fused):
    monkeypatch.setattr(cpu, 'fuse_qkv', lambda: fused)
    params = _init(model, tokens)
    loss = jax.jit(lambda p: jnp.sum(jnp.sin(model.apply({'params': p}, tokens))))
    return params, jax.value_and_grad(loss)(params)

  (fused_params, fused), (params, unfused) = run(True), run(False)
  assert jax.tree.map(jnp.shape, fused_params) == jax.tree.map(jnp.shape, params)
  for a, b in zip(jax.tree.leaves((fused_params, fused)), jax.tree.leaves((params, unfused))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


@pytest.mark.parametrize('fields', [  # scanned layers with GQA + SwiGLU + RMSNorm; unrolled with the rest
    {'num_kv_heads': 2, 'mlp': 'swiglu', 'norm': 'rmsnorm'},
    {'scan_layers': False, 'positions': 'learned', 'tied_embedding': False, 'remat': 'full'}])
def test_kv_cache_decoding_equals_the_full_forward_pass(fields):
  model = _lm(**fields)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)
  params = _init(model, tokens)
  full = jax.jit(model.apply)({'params': params}, tokens)
  init_cache = jax.jit(functools.partial(model.init, decode=True))
  cache = init_cache(jax.random.key(0), jnp.zeros((2, 12), jnp.int32))['cache']
  decode_step = jax.jit(functools.partial(model.apply, decode=True, mutable=['cache']))
  logits, cache = decode_step({'params': params, 'cache': cache}, tokens[:, :5])  # the prompt in one call
  steps = [logits]
  for t in range(5, 12):  # then one token at a time
    logits, cache = decode_step({'params': params, **cache}, tokens[:, t:t + 1],
                                positions=jnp.full((2, 1), t))
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


def test_greedy_sampling_continues_like_the_full_model():
  model = _lm()
  prompt = [5, 9, 13, 7]
  params = _init(model, jnp.zeros((1, 4), jnp.int32))
  new = decode.sample(model, params, [prompt, prompt[2:]], pad_id=0, max_new_tokens=6, rng=jax.random.key(0),
                      temperature=0.0)
  forward = jax.jit(lambda tokens: model.apply({'params': params}, tokens))
  sequence = list(prompt)
  for _ in range(6):  # greedy by hand: a full forward pass per token, over one padded width
    # Causal: the padding after the sequence cannot change the logits at its last token.
    logits = forward(jnp.array([sequence + [0] * (10 - len(sequence))]))
    sequence.append(int(logits[0, len(sequence) - 1].argmax()))
  assert new[0].tolist() == sequence[4:]
  assert new.shape == (2, 6)


def test_top_k_and_top_p_keep_the_likeliest_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda **kw: np.isfinite(decode.filter_logits(logits, 1.0, **kw))[0].tolist()  # noqa: E731
  assert kept(top_k=2, top_p=1.0) == [True, True, False, False]
  assert kept(top_k=0, top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
  assert kept(top_k=0, top_p=0.9) == [True, True, True, False]


class _Tokenizer:
  pad_id, token_bytes = 0, np.array([0, 1, 2, 3])  # token i stands for i bytes


def test_lm_task_metrics_on_known_logits():
  windows = pipeline.Split(arrays={'tokens': np.zeros((1, 5), np.int32)})
  dataset = data.Dataset('x', 4, {'train': windows}, data.next_token_batch, _Tokenizer())
  task = tasks.build(ml_collections.ConfigDict({'name': 'lm', 'z_loss': 0.0}), dataset)
  assert task.units == ('tokens', 4)
  targets = jnp.array([[1, 2, 3, 0]])  # the last target is padding
  logits = jnp.zeros((1, 4, 4))  # uniform: loss ln 4 per token
  loss, metrics = task.loss(logits, {'targets': targets})
  assert float(loss) == pytest.approx(math.log(4), rel=1e-6)
  sums = task.eval_sums(logits, {'targets': targets, 'mask': jnp.array([1])})
  summary = task.summarize(jax.device_get(sums))
  assert summary['perplexity'] == pytest.approx(4.0, rel=1e-5)
  # 2 bits (ln 4 nats) for each of 3 tokens, over the 1 + 2 + 3 bytes they stand for.
  assert summary['bits_per_byte'] == pytest.approx(3 * 2.0 / (1 + 2 + 3), rel=1e-5)



def test_gradient_accumulation_equals_one_big_batch(data_dir):
  whole = tiny_lm_config(data_dir)
  micro = tiny_lm_config(data_dir, grad_accum=4)  # 4 micro-batches of 2
  batches = lm_batches(whole, 3)
  (losses_whole, params_whole, _), (losses_micro, params_micro, _) = (train_steps(whole, batches),
                                                                      train_steps(micro, batches))
  np.testing.assert_allclose(losses_micro, losses_whole, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params_whole), jax.tree.leaves(params_micro), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_two_layer_model_overfits_one_batch(data_dir):
  config = tiny_lm_config(data_dir, steps=150)
  config.optim.update({'lr': 3e-3, 'schedule': 'constant', 'weight_decay': 0.0})
  losses, _, _ = train_steps(config, lm_batches(config, 1) * 150)
  assert losses[0] > 4.0 and losses[-1] < 0.1, (losses[0], losses[-1])  # from ln 259 to memorized


SHARDED_LOSSES = '''
import json, sys
sys.path.insert(0, 'tests')
import jax
import helpers
from bigjax import sharding, train
config = helpers.tiny_lm_config(sys.argv[1])
config.model.mlp = sys.argv[5]
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = [int(x) for x in sys.argv[2:5]]
s = train.setup(config)
with sharding.active(s.mesh, s.rules):  # helpers.train_steps, keeping the state to read where it lives
  step, _ = train.compile_train_step(s, config)
  state, losses = s.init(), []
  for batch in helpers.lm_batches(config, 3):
    state, metrics = step(state, sharding.shard_batch(batch, s.mesh))
    losses.append(float(metrics['loss']))
def layout(x):
  spec = [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
  return {'spec': spec + [None] * (x.ndim - len(spec)), 'shape': list(x.shape),
          'shards': sorted({tuple(shard.data.shape) for shard in x.addressable_shards})}
print(json.dumps({'losses': losses, 'layout': {jax.tree_util.keystr(path): layout(x) for path, x
                                               in jax.tree_util.tree_leaves_with_path(state) if x.ndim}}))
'''


def _param(*names):
  return '.params' + ''.join(f"['{n}']" for n in names)


def _expected_layout(mlp):
  """Each parameter's mesh axes, dimension by dimension, as config.LOGICAL_RULES place the tiny LM's
  logical names (models/transformer.py) on the (data, fsdp, tensor) mesh, written out by hand."""
  norms = [('final_norm',)] + [(f'layer_{i}', n) for i in (0, 1) for n in ('attention_norm', 'mlp_norm')]
  layers = {_param(*norm, p): ['fsdp'] for norm in norms for p in ('scale', 'bias')}  # (embed,)
  for i in (0, 1):
    for w in ('query', 'key', 'value'):  # (embed, heads, kv)
      layers[_param(f'layer_{i}', 'attention', w)] = ['fsdp', 'tensor', None]
    layers[_param(f'layer_{i}', 'attention', 'out')] = ['tensor', None, 'fsdp']  # (heads, kv, embed)
    for w in ('gate', 'up') if mlp == 'swiglu' else ('up',):  # (embed, mlp)
      layers[_param(f'layer_{i}', 'mlp', w, 'kernel')] = ['fsdp', 'tensor']
    layers[_param(f'layer_{i}', 'mlp', 'down', 'kernel')] = ['tensor', 'fsdp']  # (mlp, embed)
  # (vocab, embed): the byte vocabulary's 259 ids do not split in two, so sharding.py replicates that
  # dimension (test_a_vocabulary_that_divides_is_split_over_tensor: one that does is split).
  return {_param('embed', 'embedding'): [None, 'fsdp'], **layers}


# swiglu: gate and up fused, the `mlp` axis split over tensor. GELU's MLP is plain Dense layers
# sharded as swiglu's `down`: 23 s more that CI cannot spare, so `pytest -m slow` runs it.
@pytest.mark.parametrize('mlp', [pytest.param('gelu', marks=pytest.mark.slow), 'swiglu'])
def test_sharded_loss_equals_the_one_device_loss(data_dir, mlp):
  def run(devices, mesh):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}' if devices > 1 else ''}
    result = subprocess.run([sys.executable, '-c', SHARDED_LOSSES, data_dir, *map(str, mesh), mlp], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])
  # All three axes at once: data, fsdp (sharded weights) and tensor (split heads and MLP).
  sharded, one = run(8, (2, 2, 2)), run(1, (1, 1, 1))
  np.testing.assert_allclose(sharded['losses'], one['losses'], rtol=1e-5)
  # ...and the weights really are split: each parameter where the rules put it, each device holding
  # only its part (a layout that fell back to replication would give the same losses).
  params = {name: x for name, x in sharded['layout'].items() if name.startswith('.params')}
  assert {name: x['spec'] for name, x in params.items()} == _expected_layout(mlp)
  mesh = {'data': 2, 'fsdp': 2, 'tensor': 2}
  for name, x in params.items():
    part = [n // mesh[axis] if axis else n for n, axis in zip(x['shape'], x['spec'])]
    assert x['shards'] == [part] and math.prod(part) < math.prod(x['shape']), name
  # Adam's moments live where their parameters do.
  moments = {name: x for name, x in sharded['layout'].items() if '.mu[' in name or '.nu[' in name}
  assert len(moments) == 2 * len(params)
  for name, x in moments.items():
    assert x == params['.params' + name.split('.mu' if '.mu[' in name else '.nu', 1)[1]], name


def test_a_vocabulary_that_divides_is_split_over_tensor():
  """The embedding (vocab, embed) and an untied unembedding (embed, vocab) split their vocabulary
  over `tensor` when it divides (tiny's 2,048 SentencePiece ids): the rule the byte model above
  cannot show."""
  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=auto)
  model = _lm(tied_embedding=False).clone(num_outputs=2048)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))['params']
  specs = jax.tree.map(lambda s: tuple(s.spec), sharding.tree_shardings(boxed, mesh, LOGICAL_RULES))
  assert specs['embed']['embedding'] == ('tensor', 'fsdp')
  assert specs['unembed']['kernel'] == ('fsdp', 'tensor')


@pytest.mark.parametrize('name', ['lm1b', 'tiny_shakespeare'])
def test_tfds_text_datasets_through_the_same_code(name, tmp_path):
  config = tiny_lm_config(str(tmp_path))
  config.data.name = name
  with tfds.testing.mock_data(num_examples=20):
    dataset = data.load(config.data)
  batch = dataset.preprocess(dataset.splits['train'].read([0, 1]))
  assert batch['inputs'].shape == batch['targets'].shape == (2, 32)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert dataset.num_classes == 259 and len(dataset.splits['eval']) > 0


@pytest.mark.slow  # about 25 s on 2 cores, which CI cannot spare; KV-cache sampling is tested in process
def test_train_then_sample_from_the_command_line(data_dir, tmp_path):
  flags = ['--config=experiments/lm_gpt.py:tiny', f'--workdir={tmp_path}',
           f'--config.data.data_dir={data_dir}', '--config.train.steps=30', '--config.train.batch_size=8',
           '--config.data.seq_len=32', '--config.model.num_layers=1', '--config.model.d_model=32',
           '--config.data.tokenizer=byte']  # SentencePiece on the whole corpus costs 20 s; tested above
  result = run_main(*flags)
  assert result.returncode == 0, result.stderr[-3000:]
  eval_line = read_metrics(tmp_path, 'eval')[-1]
  # Untrained, the model is uniform over the 259 ids: log2(259) = 8.02 bits a byte, perplexity 259.
  # Thirty steps take it to about 7.1 and 140.
  assert eval_line['bits_per_byte'] < 7.5 and eval_line['perplexity'] < 200, eval_line
  train_line = read_metrics(tmp_path, 'train')[-1]
  assert train_line['tokens_per_s'] > 0 and 0 < train_line['mfu'] < 1
  result = run_main(*flags, '--mode=sample', '--prompt=def ', '--num_samples=2', '--max_new_tokens=20')
  assert result.returncode == 0, result.stderr[-3000:]
  samples = [line for line in result.stdout.splitlines() if line.startswith('--- ')]
  assert len(samples) == 2 and all(line.startswith('--- def ') for line in samples)
  bad = run_main(*flags, '--mode=sample', '--top_p=0')
  assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'top_p' in bad.stderr


def test_per_row_sampling_draws_what_mode_sample_draws_for_each_row():
  """decode.choose_rows (an export's sampler: each row its own options) against
  jax.random.categorical over filter_logits (--mode=sample's), row by row: on its fast path (every
  top_k within CANDIDATES), and with one row that needs the whole vocabulary sorted (top_k 0, 200)."""
  logits = jax.random.normal(jax.random.key(0), (6, 300)) * 3
  keys = jax.random.split(jax.random.key(1), 6)
  temperature = jnp.array([0.0, 0.7, 1.0, 1.3, 0.9, 0.5])
  top_p = jnp.array([1.0, 0.9, 0.95, 0.5, 1.0, 1.0])
  for top_k in ([0, 5, 40, 64, 1, 20], [0, 5, 0, 64, 1, 20], [0, 5, 200, 64, 1, 20]):
    got = decode.choose_rows(logits, keys, temperature, jnp.array(top_k, jnp.int32), top_p)
    for r, (t, k, p) in enumerate(zip(temperature.tolist(), top_k, top_p.tolist())):
      expected = jax.random.categorical(keys[r], decode.filter_logits(logits[r:r + 1], t, k, p)[0]) if t \
          else logits[r].argmax()
      assert int(got[r]) == int(expected), (top_k, r)
