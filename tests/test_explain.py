"""Attribution methods (bigjax/explain.py): integrated gradients' completeness, the model-randomization
sanity check of Adebayo et al. (2018), planted signals found, attention rollout against a hand-computed
case, and --mode=explain end to end. The models are tiny and trained here in seconds."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from bigjax import explain
from bigjax.config import ConfigError
from bigjax.models.lstm import LSTMClassifier
from bigjax.models.mlp import MLP
from bigjax.models.transformer import TransformerClassifier
from helpers import load_script, run_main, tree_listing

BLACK = np.full((8, 8, 1), -2.0, np.float32)  # a zero image through the digits' preprocessing


def _key(seed):
  """RBG keys for parameter init: much quicker to compile than threefry's, and init is all of it here."""
  return jax.random.key(seed, impl='rbg')


def _fit(model, x, y, steps, *, lr=3e-3, weight_decay=0.0, batch=128, seed=0):
  """Parameters of model trained with AdamW on minibatches of (x, y) (in train mode: dropout)."""
  params = nn.meta.unbox(model.init(_key(seed), x[:2])['params'])
  tx = optax.adamw(lr, weight_decay=weight_decay)

  @jax.jit
  def step(params, opt, xb, yb, key):
    def loss(p):
      logits = model.apply({'params': p}, xb, train=True, rngs={'dropout': key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    updates, opt = tx.update(jax.grad(loss)(params), opt, params)
    return optax.apply_updates(params, updates), opt

  opt, rng = tx.init(params), np.random.RandomState(seed)
  for i in range(steps):
    rows = rng.randint(0, len(x), batch)
    params, opt = step(params, opt, x[rows], y[rows], jax.random.key(i))
  return params


def _image_attributions(model, method, steps=64):
  """A jitted (params, images, targets) -> each image's attribution for its target's logit."""
  def one(params, x, target, key):
    f = lambda image: model.apply({'params': params}, image[None])[0, target]
    if method == 'integrated_gradients':
      return explain.integrated_gradients(f, x, BLACK, steps)
    if method == 'smoothgrad':
      return explain.smoothgrad(f, x, key, 0.15, 16) * (x - BLACK)
    return explain.gradient_x_input(f, x, BLACK)
  return jax.jit(lambda params, xs, targets: jax.vmap(one, (None, 0, 0, 0))(
      params, xs, targets, jax.random.split(jax.random.key(0), len(xs))))


@pytest.fixture(scope='module')
def digits_mlp():
  """(model, trained params, test images, test labels): an MLP on the 8x8 digits, about 95% accurate."""
  images, labels = load_digits(return_X_y=True)
  x = ((images.reshape(-1, 8, 8, 1) / 16 - 0.5) / 0.25).astype(np.float32)
  model = MLP(10, depth=1, width=64)
  params = _fit(model, x[:1400], labels[:1400], 300)
  assert (model.apply({'params': params}, x[1400:]).argmax(-1) == labels[1400:]).mean() > 0.9
  return model, params, x[1400:1420], labels[1400:1420].astype(np.int32)


def test_integrated_gradients_sum_to_the_logit_difference(digits_mlp):
  model, params, x, labels = digits_mlp
  attributions = _image_attributions(model, 'integrated_gradients', steps=128)(params, x, labels)
  logits = lambda images: model.apply({'params': params}, images)[np.arange(len(labels)), labels]
  difference = logits(x) - logits(np.broadcast_to(BLACK, x.shape))
  sums = attributions.sum(axis=(1, 2, 3))
  np.testing.assert_array_less(np.abs(sums - difference), 0.01 * np.abs(difference))
  # Gradient x input is one step of the same sum: far from complete on this nonlinear model.
  one_step = _image_attributions(model, 'gradient_x_input')(params, x, labels).sum(axis=(1, 2, 3))
  assert np.mean(np.abs(one_step - difference) / np.abs(difference)) > 0.05


@pytest.mark.parametrize('method', ['integrated_gradients', 'smoothgrad', 'gradient_x_input'])
def test_a_model_with_random_weights_gets_other_attributions(digits_mlp, method):
  """Adebayo et al. (2018): a map that stays when the weights are randomized explains the input, not
  the model. Signed maps: their absolute values correlate (about 0.9 here) through the input they are
  multiplied by, which is why the paper's gradient x input and IG fail that version."""
  model, params, x, labels = digits_mlp
  random = nn.meta.unbox(model.init(_key(7), x[:1])['params'])
  attribute = _image_attributions(model, method)
  trained, randomized = np.asarray(attribute(params, x, labels)), np.asarray(attribute(random, x, labels))
  correlations = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(trained, randomized)]
  assert np.mean(correlations) < 0.5, correlations


def test_attributions_find_the_image_region_that_decides_the_label():
  rng = np.random.RandomState(0)
  raw = rng.rand(20_000, 8, 8, 1).astype(np.float32)
  labels = (raw[:, 2:5, 2:5].mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)  # the 3x3 region alone decides
  x = (raw - 0.5) / 0.25
  model = MLP(2, depth=1, width=32)
  params = _fit(model, x[:19_000], labels[:19_000], 600, weight_decay=1.0, batch=512)
  test, test_labels = x[19_000:19_100], labels[19_000:19_100]
  assert (model.apply({'params': params}, test).argmax(-1) == test_labels).mean() > 0.9
  mass = np.abs(np.asarray(_image_attributions(model, 'integrated_gradients', 32)(params, test, test_labels)))
  in_region = mass[:, 2:5, 2:5].sum(axis=(1, 2, 3)) / mass.sum(axis=(1, 2, 3))
  assert in_region.mean() >= 0.8 and np.median(in_region) >= 0.8, in_region


def _planted_tokens(n, rng, length=12):
  """Random filler (ids 6..23) with one signal token, 4 (class 0) or 5 (class 1), at a random place;
  texts of 6 to 12 tokens, padded with 0."""
  tokens = rng.randint(6, 24, (n, length))
  lengths = rng.randint(6, length + 1, n)
  tokens[np.arange(length)[None] >= lengths[:, None]] = 0
  labels, where = rng.randint(0, 2, n), rng.randint(0, lengths)
  tokens[np.arange(n), where] = 4 + labels
  return tokens.astype(np.int32), labels.astype(np.int32), where


@pytest.fixture(scope='module')
def token_classifier():
  """(model, variables, rng): the LSTM classifier trained on planted tokens, with word dropout, which
  zeroes embeddings as the zero baseline does: the path from it to a text stays among inputs it knows."""
  rng = np.random.RandomState(0)
  tokens, labels, _ = _planted_tokens(4000, rng)
  model = LSTMClassifier(2, vocab_size=24, embed_dim=16, hidden=32, word_dropout=0.3)
  return model, {'params': _fit(model, tokens, labels, 300, batch=64)}, rng


def _token_scores(model, variables, method, tokens, labels, **options):
  """Each text's per-token scores, vmapped over the texts."""
  run = explain.make_explainer(model, explain.Request(method, **options), text=True)
  keys = jax.random.split(jax.random.key(0), len(tokens))
  scores, f_x, f_baseline = jax.vmap(run, in_axes=(None, 0, None, 0, 0))(
      variables, tokens[:, None], None, labels, keys)
  return np.asarray(scores), np.asarray(f_x), np.asarray(f_baseline)


def test_attributions_find_the_token_that_decides_the_label(token_classifier):
  model, variables, rng = token_classifier
  tokens, labels, where = _planted_tokens(40, rng)
  assert (model.apply(variables, tokens).argmax(-1) == labels).mean() > 0.95
  scores = np.abs(_token_scores(model, variables, 'integrated_gradients', tokens, labels, steps=32)[0])
  assert np.all(scores[tokens == 0] == 0)  # padding changes nothing, so it gets nothing
  mass = scores[np.arange(len(tokens)), where] / scores.sum(axis=1)
  assert mass.mean() >= 0.8, mass


def _random_transformer(tokens, num_layers=2):
  model = TransformerClassifier(2, vocab_size=24, num_layers=num_layers, d_model=16, num_heads=2, dropout=0.0,
                                max_length=16, attention='xla')
  return model, jax.jit(model.init)(_key(1), tokens)


@pytest.mark.parametrize('model_name', ['lstm', pytest.param('transformer', marks=pytest.mark.slow)])
def test_integrated_gradients_over_token_embeddings_are_complete(token_classifier, model_name):
  """Through both layouts of the embedding: the LSTM's time-major (T, B, E), the Transformer's (B, T, E)."""
  model, variables, rng = token_classifier
  tokens, labels, _ = _planted_tokens(5, rng)
  if model_name == 'transformer':
    model, variables = _random_transformer(tokens, num_layers=1)
  scores, f_x, f_baseline = _token_scores(model, variables, 'integrated_gradients', tokens, labels, steps=64)
  difference = f_x - f_baseline
  np.testing.assert_array_less(np.abs(scores.sum(axis=1) - difference), 0.01 * np.abs(difference))
  np.testing.assert_allclose(f_x, model.apply(variables, tokens)[np.arange(5), labels], atol=1e-5)


def test_the_blur_baseline_keeps_a_constant_image_and_smooths_an_edge():
  constant = np.full((1, 8, 6, 3), 0.7, np.float32)
  np.testing.assert_allclose(explain._image_baseline('blur', None, constant), constant, rtol=1e-6)
  edge = np.zeros((1, 8, 8, 1), np.float32)
  edge[:, :, 4:] = 1.0
  blurred = explain._image_baseline('blur', None, edge)[0, 3, :, 0]
  assert blurred.shape == (8,) and np.all(np.diff(blurred) > 0) and 0 < blurred[0] and blurred[-1] < 1


def test_attention_rollout_matches_a_hand_computed_two_layer_case():
  # Layer 1: token 0 sees itself, token 1 both halves; layer 2 the other way round. Two heads each,
  # whose mean is that pattern. With the residual: A1' = [[1, 0], [.25, .75]], A2' = [[.75, .25], [0, 1]].
  layer_1 = jnp.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])[None]
  layer_2 = jnp.array([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])[None]
  rollout = explain.attention_rollout([layer_1, layer_2])
  np.testing.assert_allclose(rollout[0], [[0.8125, 0.1875], [0.25, 0.75]], atol=1e-6)


@pytest.mark.parametrize('causal', [False, True])
def test_the_sown_weights_are_the_ones_attention_applies(causal):
  """weights @ values equals the attention output, with padding, and with grouped-query heads."""
  from bigjax.models.attention import attention
  from bigjax.models.transformer import attention_weights
  q, k, v = (np.random.RandomState(i).randn(2, 5, heads, 8).astype(np.float32)
             for i, heads in enumerate((4, 2, 2)))
  valid = np.array([[True] * 5, [True] * 3 + [False] * 2])

  @jax.jit  # one compile, not one per operation
  def both(q, k, v, valid):
    mixed = jnp.einsum('bhts,bshd->bthd', attention_weights(q, k, valid, causal), jnp.repeat(v, 2, axis=2))
    return mixed, attention(q, k, v, valid, causal=causal, implementation='xla')
  np.testing.assert_allclose(*both(q, k, v, valid), atol=1e-5)


def test_attention_weights_are_sown_only_when_asked_and_rows_sum_to_one():
  tokens = np.array([[7, 4, 9, 11, 0, 0]], np.int32)
  model, variables = _random_transformer(tokens)
  # The trainer's call (its mutable collections: none here, batch_stats elsewhere) sows nothing.
  trainer_call = lambda: model.apply(variables, tokens, mutable=['batch_stats'])
  assert 'intermediates' not in jax.eval_shape(trainer_call)[1]

  @jax.jit  # one compile, not one per operation
  def run(variables, tokens):
    weights = explain.attention_weights(model, variables, tokens)
    # The token embeddings read and put back through flax's interception.
    put_back = lambda scale: explain.logits_with_embeddings(
        model, variables, tokens, explain.token_embeddings(model, variables, tokens) * scale)
    return (weights, explain.attention_rollout(weights), model.apply(variables, tokens), put_back(1.0),
            put_back(0.0))
  weights, rollout, logits, same, zeroed = jax.device_get(run(variables, tokens))
  assert len(weights) == 2 and weights[0].shape == (1, 2, 6, 6)
  for w in weights:
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert np.all(w[..., 4:] == 0)  # no attention to padding
  np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
  assert np.all(rollout[0, :4, 4:] == 0)
  # Embeddings put back unchanged give the same logits; zeroed, the model reads the replacement.
  np.testing.assert_allclose(same, logits, atol=1e-6)
  assert not np.allclose(zeroed, logits, atol=1e-3)
  # and the hand rule, layer by layer
  a = [0.5 * w[0].mean(0) + 0.5 * np.eye(6) for w in weights]
  a = [m / m.sum(-1, keepdims=True) for m in a]
  np.testing.assert_allclose(rollout[0], a[1] @ a[0], atol=1e-6)


def test_scanned_vit_layers_come_back_one_per_layer():
  """nn.scan stacks a scanned model's sown weights (layers first): they come back one per layer."""
  vit = pytest.importorskip('bigjax.models.vit')
  model = vit.ViT(3, patch_size=4, d_model=16, num_layers=3, num_heads=2, attention='xla')
  images = jnp.ones((1, 8, 8, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  weights = jax.eval_shape(lambda v: explain.attention_weights(model, v, images), variables)
  assert [w.shape for w in weights] == [(1, 2, 5, 5)] * 3  # 4 patches and the class token
  run = explain.make_explainer(model, explain.Request('attention_rollout'), text=False)
  scores = jax.eval_shape(run, variables, images, None, 0, jax.random.key(0))[0]
  assert scores.shape == (2, 2)  # the grid of patches


@pytest.fixture(scope='module')
def digits_run(main_job, data_dir, tmp_path_factory):
  """(config, workdir): a copy of the README's main run (digits_mlp, trained once per test session)."""
  config = load_script('experiments/digits_mlp.py').get_config()
  config.data.data_dir = data_dir
  workdir = str(tmp_path_factory.mktemp('runs') / 'digits')
  shutil.copytree(main_job, workdir)
  return config, workdir


def test_explain_writes_a_heatmap_per_test_example(digits_run):
  config, workdir = digits_run
  lines = explain.explain_checkpoint(config, workdir, explain.Request(num_examples=2, steps=16))
  assert [line['name'] for line in lines] == ['test_0', 'test_1']
  for line in lines:
    assert os.path.getsize(line['path']) > 5000 and line['path'].endswith('.png')
    assert line['attribution_sum'] == pytest.approx(line['logit_difference'], rel=0.05)


def test_an_image_file_is_read_as_the_dataset_reads_its_images(digits_run, tmp_path):
  """test_0 saved as a PNG, then explained from the file: the same prediction and the same map."""
  from PIL import Image

  from bigjax import data
  config, workdir = digits_run
  image = data.load(config.data).splits['test'].read([0])['image'][0]
  Image.fromarray(image[..., 0]).save(tmp_path / 'digit.png')
  request = explain.Request(num_examples=1, steps=16)
  from_split = explain.explain_checkpoint(config, workdir, request)[0]
  path = str(tmp_path / 'digit.png')
  from_file = explain.explain_checkpoint(config, workdir, request._replace(image=path))[0]
  assert from_file['name'] == 'digit' and from_file['path'].endswith('explain/digit.png')
  for key in ('label', 'probability', 'attribution_sum', 'logit_difference'):
    assert from_file[key] == from_split[key]


def test_bad_explain_requests_are_config_errors_and_write_nothing(digits_run, tmp_path):
  config, workdir = digits_run
  before = tree_listing(workdir)
  not_an_image = tmp_path / 'notes.png'
  not_an_image.write_text('not a png')
  for request, message in (
      (explain.Request(image=str(not_an_image)), 'could not be read as an image'),
      (explain.Request(texts=('hello',)), '--text is for text classifiers'),
      (explain.Request(method='attention_rollout'), 'needs a Transformer'),
      (explain.Request(split='nope'), 'is not a split'),
      (explain.Request(target=10), 'is not a class')):
    with pytest.raises(ConfigError, match=message):
      explain.explain_checkpoint(config, workdir, request)
  with pytest.raises(ConfigError, match='no checkpoints'):
    explain.explain_checkpoint(config, str(tmp_path / 'empty'), explain.Request())
  assert tree_listing(workdir) == before and not os.path.exists(tmp_path / 'empty')


@pytest.mark.slow  # two processes that load jax: about 20 s
def test_explain_from_the_command_line(digits_run, tmp_path):
  config, workdir = digits_run
  common = ['--config=experiments/digits_mlp.py', f'--config.data.data_dir={config.data.data_dir}',
            '--mode=explain']
  result = run_main(*common, f'--workdir={workdir}', '--num_examples=1', '--method=smoothgrad')
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line['method'] == 'smoothgrad' and os.path.exists(line['path'])
  empty = tmp_path / 'empty'
  result = run_main(*common, f'--workdir={empty}')
  assert result.returncode == 2 and 'no checkpoints' in result.stderr and not empty.exists()
