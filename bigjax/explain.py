"""Why a classifier decided as it did: attribution maps over its input (--mode=explain).

  python -m bigjax.main --config=experiments/digits_cnn.py --mode=explain --split=test --num_examples=8
  python -m bigjax.main --config=experiments/imdb_lstm.py:offline --mode=explain --text="import os"

The methods are pure functions of f, the input -> scalar function to explain (a class's logit), and
of the input x; each returns an attribution of x's shape:

  gradient_x_input      grad f(x) * (x - baseline)
  integrated_gradients  (x - baseline) * the mean of grad f along the straight path from the baseline
                        to x (Sundararajan et al., 2017): the attributions sum to f(x) - f(baseline)
  smoothgrad            the mean gradient over noisy copies of x (Smilkov et al., 2017); --mode=explain
                        multiplies it by (x - baseline), as gradient x input
  attention_rollout     (Transformers) the attention of every layer, each averaged over heads with the
                        residual added, multiplied through the layers (Abnar and Zuidema, 2020)

The baseline is what "no evidence" means: for images the black image (zeros of the stored image,
through the dataset's preprocessing), for text a zero embedding. A text model is explained over its
token embeddings (the output of its nn.Embed named 'embed', replaced through flax's method
interception, so no model needs a hook); a token's score is its attribution summed over the
embedding. The class explained is the predicted one unless --target names another.
"""

import re
import time
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from bigjax import data, evaluate, explain_render, sharding, train
from bigjax.config import ConfigError

CHUNK = 32  # gradients computed at once (vmapped) along an integration path or over noise samples


def gradient_x_input(f: Callable, x, baseline):
  return jax.grad(f)(x) * (x - baseline)


def _weighted_gradients(f: Callable, points, weights):
  """sum_k weights[k] * grad f(points[k]): a scan over chunks of CHUNK points, each chunk vmapped, so
  memory stays that of one chunk. Padded to whole chunks with zero weights: one traced body."""
  n = len(weights)
  chunk = min(CHUNK, n)
  pad = -n % chunk
  points = jnp.concatenate([points, jnp.repeat(points[:1], pad, axis=0)])
  weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])
  grad = jax.vmap(jax.grad(f))

  def add(total, chunk_inputs):
    p, w = chunk_inputs
    return total + jnp.tensordot(w, grad(p), axes=1), None
  total, _ = jax.lax.scan(add, jnp.zeros(points.shape[1:], points.dtype),
                          (points.reshape(-1, chunk, *points.shape[1:]), weights.reshape(-1, chunk)))
  return total


def integrated_gradients(f: Callable, x, baseline, steps: int = 64):
  """The path integral by the midpoint rule: the gradient at steps points, alpha = (k + 1/2) / steps."""
  alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
  path = baseline[None] + alphas.reshape(-1, *([1] * x.ndim)) * (x - baseline)[None]
  return (x - baseline) * _weighted_gradients(f, path, jnp.full(steps, 1.0 / steps, x.dtype))


def smoothgrad(f: Callable, x, key, noise: float = 0.15, samples: int = 32):
  """The mean gradient over samples copies of x with Gaussian noise of standard deviation
  noise * (max(x) - min(x)), the paper's scale."""
  sigma = noise * (jnp.max(x) - jnp.min(x))
  noisy = x[None] + sigma * jax.random.normal(key, (samples, *x.shape), x.dtype)
  return _weighted_gradients(f, noisy, jnp.full(samples, 1.0 / samples, x.dtype))


def attention_rollout(weights) -> jax.Array:
  """weights: each layer's attention (B, heads, T, T), input side first -> (B, T, T): row i is how
  much of token i's final state flows from each input token. The residual is the identity, added at
  half weight, and each layer's rows renormalized: every row of the result sums to 1."""
  eye = jnp.eye(weights[0].shape[-1])
  rollout = jnp.broadcast_to(eye, weights[0].shape[:1] + eye.shape)
  for w in weights:
    a = 0.5 * w.mean(axis=1) + 0.5 * eye
    rollout = (a / a.sum(axis=-1, keepdims=True)) @ rollout
  return rollout


METHODS = ('integrated_gradients', 'smoothgrad', 'gradient_x_input', 'attention_rollout')
BASELINES = ('auto', 'black', 'zeros', 'blur')  # auto: black for images, zeros for text


class Request(NamedTuple):
  """What --mode=explain was asked (main.py's flags)."""
  method: str = 'integrated_gradients'
  steps: int = 64  # integrated gradients
  baseline: str = 'auto'
  noise: float = 0.15  # smoothgrad
  samples: int = 32  # smoothgrad
  target: int = -1  # the class explained; -1: the predicted one
  image: str = ''
  texts: tuple = ()
  split: str = 'test'
  num_examples: int = 4


def attention_weights(model, variables, inputs) -> list:
  """Each layer's attention (B, heads, T, S), in layer order, as the model's Attention modules sow
  them; layers scanned with nn.scan come stacked (layers first) and are split."""
  _, state = model.apply(variables, inputs, train=False, mutable=['intermediates'])
  found = jax.tree_util.tree_flatten_with_path(state.get('intermediates', {}))[0]
  found = [(jax.tree_util.keystr(path), leaf) for path, leaf in found if 'attention_weights' in str(path)]
  natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]  # layer_10 > 9
  layers = []
  for _, leaf in sorted(found, key=lambda item: natural(item[0])):
    layers.extend(list(leaf) if leaf.ndim == 5 else [leaf])
  return layers


def _is_token_embed(context) -> bool:
  return isinstance(context.module, nn.Embed) and context.module.name == 'embed' and \
      context.method_name == '__call__'


def token_embeddings(model, variables, tokens):
  """What the model's token embedding returns for tokens (1, T), in the model's own layout."""
  seen = []

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_token_embed(context):
      seen.append(out)
    return out
  with nn.intercept_methods(capture):
    model.apply(variables, tokens, train=False)
  if not seen:
    raise ConfigError(f'--mode=explain on text needs a model whose token embedding is an nn.Embed named '
                      f'"embed"; {type(model).__name__} has none')
  return seen[0]


def logits_with_embeddings(model, variables, tokens, embeddings):
  """The model's logits with its token embedding's output replaced by `embeddings`."""
  def replace(next_fun, args, kwargs, context):
    return embeddings if _is_token_embed(context) else next_fun(*args, **kwargs)
  with nn.intercept_methods(replace):
    return model.apply(variables, tokens, train=False)


def _check(config, request: Request) -> bool:
  """ConfigError for a request that cannot work, before anything is loaded; True for text."""
  spec = data.DATASETS[config.data.name]
  text = bool(spec.text_feature)
  if (text and not spec.label_feature) or spec.target_feature or spec.num_classes is None:
    raise ConfigError(f'--mode=explain needs a classifier: data.name={config.data.name!r} has no classes')
  if request.image and text:
    raise ConfigError(f'--image is for image classifiers: data.name={config.data.name!r} is text: use --text')
  if request.texts and not text:
    raise ConfigError(f'--text is for text classifiers: data.name={config.data.name!r} is not text: '
                      f'use --image')
  if request.image and request.texts:
    raise ConfigError('--image and --text: give one kind of input')
  if request.baseline in ('black', 'blur') and text:
    raise ConfigError(f'--baseline={request.baseline} is for images: use zeros (a zero embedding) for text')
  if request.steps < 1 or request.samples < 1 or request.noise < 0 or request.num_examples < 1:
    raise ConfigError('--steps, --samples and --num_examples must be >= 1, and --noise >= 0')
  return text


class _Example(NamedTuple):
  name: str
  inputs: np.ndarray  # one example as the model takes it, batch axis first: (1, ...)
  shown: object  # an image (H, W, C) uint8, or the token strings
  label: object  # the true class (multi-label: the 0/1 vector of classes present), where known


def _split_examples(dataset, split: str, n: int, tokenizer) -> list[_Example]:
  if split not in dataset.splits:
    raise ConfigError(f'--split={split} is not a split: use one of {", ".join(dataset.splits)}')
  rows = dataset.splits[split].read(np.arange(min(n, len(dataset.splits[split]))))
  batch = dataset.preprocess(rows)
  shown = rows['image'] if tokenizer is None else [_token_strings(tokenizer, t) for t in rows['tokens']]
  return [_Example(f'{split}_{i}', batch['inputs'][i:i + 1], shown[i], batch['label'][i])
          for i in range(len(batch['inputs']))]


def _token_strings(tokenizer, ids) -> list[str]:
  return [tokenizer.decode([int(i)]) for i in ids if i != tokenizer.pad_id]


def _image_example(dataset, path: str) -> _Example:
  """The image at path in the dataset's channels and stored size, preprocessed as at eval."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (only --image needs it)
  stored = dataset.splits['test'].read([0])
  h, w, c = stored['image'].shape[1:]
  try:
    with Image.open(path) as opened:
      image = opened.convert('L' if c == 1 else 'RGB').resize((w, h), Image.Resampling.BILINEAR)
  except (OSError, UnidentifiedImageError) as e:
    raise ConfigError(f'--image={path} could not be read as an image ({type(e).__name__}): give a PNG or '
                      f'JPEG file') from e
  pixels = np.asarray(image, np.uint8).reshape(h, w, c)
  inputs = dataset.preprocess({'image': pixels[None], 'label': np.zeros(1, np.int64)})['inputs']
  name = re.sub(r'[^\w.-]', '_', epath.Path(path).stem)
  return _Example(name, inputs, pixels, None)


def _examples(dataset, request: Request, seq_len: int) -> list[_Example]:
  tokenizer = dataset.tokenizer
  if request.image:
    return [_image_example(dataset, request.image)]
  if request.texts:
    tokens = data.encode_texts(tokenizer, request.texts, seq_len)[0].astype(np.int32)
    return [_Example(f'text_{i}', tokens[i:i + 1], _token_strings(tokenizer, tokens[i]), None)
            for i in range(len(tokens))]
  return _split_examples(dataset, request.split, request.num_examples, tokenizer)


def _image_baseline(kind: str, dataset, inputs: np.ndarray) -> np.ndarray:
  """(1, H, W, C): black (a zero image through the dataset's preprocessing), zeros in the model's
  input space, or the input blurred (a Gaussian of a sixth of the image's side)."""
  if kind == 'zeros':
    return np.zeros_like(inputs)
  if kind == 'blur':
    sigma = max(inputs.shape[1:3]) / 6

    def gaussian(n):  # rows normalized: a constant image stays as it is, up to the edges
      distance = np.arange(n)[:, None] - np.arange(n)[None, :]
      g = np.exp(-distance ** 2 / (2 * sigma ** 2))
      return g / g.sum(axis=1, keepdims=True)
    return np.einsum('hi,bijc,wj->bhwc', gaussian(inputs.shape[1]), inputs,
                     gaussian(inputs.shape[2])).astype(inputs.dtype)
  black = np.zeros((1, *dataset.splits['test'].read([0])['image'].shape[1:]), np.uint8)
  return dataset.preprocess({'image': black, 'label': np.zeros(1, np.int64)})['inputs'].astype(inputs.dtype)


def _rollout_scores(model, weights, tokens_valid):
  """Each input token's share of the pooled state: the class token's row for a class-token ViT,
  else the mean of the rows of the real tokens (mean pooling)."""
  rollout = attention_rollout(weights)
  if getattr(model, 'classifier', None) == 'token':
    return rollout[0, 0, 1:]
  row = tokens_valid[0] / tokens_valid[0].sum()
  return row @ rollout[0]


def make_explainer(model, request: Request, text: bool, pad_id: int = 0):
  """A jitted (variables, inputs (1, ...), baseline, target, key) -> (attribution, f(x), f(baseline)):
  the attribution has the input's shape (images), or one score per token (text)."""
  method = request.method

  def explain(variables, inputs, baseline, target, key):
    if method == 'attention_rollout':
      weights = attention_weights(model, variables, inputs)
      valid = inputs != pad_id if text else jnp.ones((1, weights[0].shape[-1]), bool)
      scores = _rollout_scores(model, weights, valid)
      if not text:  # one score per patch, row-major: the grid of patches
        scores = scores.reshape(inputs.shape[1] // model.patch_size, inputs.shape[2] // model.patch_size)
      return scores, jnp.nan, jnp.nan
    if text:
      x = token_embeddings(model, variables, inputs)
      f = lambda e: logits_with_embeddings(model, variables, inputs, e)[0, target]
      baseline = jnp.zeros_like(x)
    else:
      x = inputs[0]
      f = lambda image: model.apply(variables, image[None], train=False)[0, target]
      baseline = baseline[0]
    if method == 'integrated_gradients':
      attribution = integrated_gradients(f, x, baseline, request.steps)
    elif method == 'smoothgrad':
      attribution = smoothgrad(f, x, key, request.noise, request.samples) * (x - baseline)
    else:
      attribution = gradient_x_input(f, x, baseline)
    if text:  # one score per token: (1, T, E) or time-major (T, 1, E) alike, for a batch of one
      attribution = attribution.reshape(-1, attribution.shape[-1]).sum(axis=-1)
    return attribution, f(x), f(baseline)
  return jax.jit(explain)


def explain_checkpoint(config, workdir: str, request: Request) -> list[dict]:
  """Explains each example of the request with the newest checkpoint in workdir; writes one map per
  example into workdir/explain/ and returns one summary per example (what main.py prints)."""
  text = _check(config, request)
  s = train.setup(config, workdir)
  names = s.dataset.class_names or tuple(str(i) for i in range(s.dataset.num_classes))
  if request.target >= len(names):
    raise ConfigError(f'--target={request.target} is not a class: use 0..{len(names) - 1} (or -1: predicted)')
  pad_id = s.dataset.tokenizer.pad_id if text else 0
  with sharding.active(s.mesh, s.rules):
    examples = _examples(s.dataset, request, config.data.seq_len if text else 0)
    if request.method == 'attention_rollout':
      variables_shape = {'params': s.abstract_state.params, **s.abstract_state.model_state}
      if not jax.eval_shape(lambda v: attention_weights(s.model, v, examples[0].inputs), variables_shape):
        raise ConfigError(f'--method=attention_rollout needs a Transformer: model.name={config.model.name!r} '
                          f'has no attention (use integrated_gradients, smoothgrad or gradient_x_input)')
    state, step = train.restore_newest(s, config, workdir)
    variables = evaluate.variables(state)
    baseline = None if text else _image_baseline(
        'black' if request.baseline == 'auto' else request.baseline, s.dataset, examples[0].inputs)
    # Multi-label: each class's own sigmoid; the class explained by default is the likeliest.
    activation = jax.nn.sigmoid if data.DATASETS[config.data.name].multi_label else jax.nn.softmax
    predict = jax.jit(lambda v, x: activation(s.model.apply(v, x, train=False).astype(jnp.float32)))
    explain = make_explainer(s.model, request, text, pad_id)
    out_dir = epath.Path(workdir) / 'explain'
    lines, last_log = [], time.monotonic()
    for i, example in enumerate(examples):
      if not text and request.baseline == 'blur':
        baseline = _image_baseline('blur', s.dataset, example.inputs)
      probabilities = np.asarray(predict(variables, example.inputs))[0]
      predicted = int(probabilities.argmax())
      target = predicted if request.target < 0 else request.target
      key = jax.random.fold_in(jax.random.key(config.seed), i)
      attribution, f_x, f_baseline = jax.device_get(explain(variables, example.inputs, baseline, target, key))
      line = {'name': example.name, 'label': names[predicted], 'target': names[target],
              'probability': round(float(probabilities.max()), 4), 'method': request.method}
      if example.label is not None:
        line['true_label'] = (names[int(example.label)] if np.ndim(example.label) == 0 else
                              '+'.join(names[c] for c in np.flatnonzero(example.label)))
      if request.method == 'integrated_gradients':  # completeness: these two agree as --steps grows
        line['attribution_sum'] = round(float(np.sum(attribution)), 5)
        line['logit_difference'] = round(float(f_x - f_baseline), 5)
      if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        line['path'] = explain_render.write(out_dir, example, np.asarray(attribution), line, step=step,
                                            probabilities={n: float(p) for n, p in zip(names, probabilities)})
      lines.append(line)
      if time.monotonic() - last_log > 10:
        logging.info('explained %d/%d examples', i + 1, len(examples))
        last_log = time.monotonic()
  return lines
