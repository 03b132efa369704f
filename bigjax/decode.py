"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p; jitted, batched.

  tokens = decode.sample(model, params, prompts, tokenizer, max_new_tokens=200, rng=key,
                         temperature=0.8, top_k=40, top_p=0.95)

Prompts of different lengths are left-padded into one batch: pads are marked
invalid, so no token attends to them, and positions count real tokens only.
The prompt fills the cache in one call; each new token is then one cached step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def filter_logits(logits, temperature: float, top_k: int, top_p: float):
  """Logits (B, V) with everything outside top-k and the top-p nucleus at -inf."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    # The smallest logit still inside the nucleus: keep tokens whose preceding mass is < top_p.
    inside = jnp.concatenate([jnp.ones_like(cumulative[:, :1], bool), cumulative[:, :-1] < top_p], axis=-1)
    threshold = jnp.min(jnp.where(inside, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _choose(logits, rng, temperature, top_k, top_p):
  if temperature == 0.0:  # greedy
    return logits.argmax(-1)
  return jax.random.categorical(rng, filter_logits(logits, temperature, top_k, top_p))


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  valid = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):], valid[i, width - len(p):] = p, True
  return tokens, valid


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k', 'top_p'))
def _generate(model, params, tokens, valid, rng, *, max_new_tokens, temperature, top_k, top_p):
  batch, width = tokens.shape
  cache = model.init(jax.random.key(0), jnp.zeros((batch, width + max_new_tokens), jnp.int32),
                     decode=True)['cache']  # zeros, sized for prompt + continuation
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  logits, updated = model.apply({'params': params, 'cache': cache}, tokens, positions=positions, valid=valid,
                                decode=True, mutable=['cache'])
  next_position = positions[:, -1] + 1

  def step(carry, rng):
    cache, logits, position = carry
    token = _choose(logits, rng, temperature, top_k, top_p)
    logits, updated = model.apply({'params': params, 'cache': cache}, token[:, None],
                                  positions=position[:, None], valid=jnp.ones((batch, 1), bool),
                                  decode=True, mutable=['cache'])
    return (updated['cache'], logits[:, -1], position + 1), token

  _, new_tokens = jax.lax.scan(step, (updated['cache'], logits[:, -1], next_position),
                               jax.random.split(rng, max_new_tokens))
  return new_tokens.T  # (B, max_new_tokens)


def sample(model, params, prompts: list[list[int]], pad_id: int, *, max_new_tokens: int, rng,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
  """New token ids (B, max_new_tokens) continuing each prompt (a list of ids)."""
  tokens, valid = left_pad(prompts, pad_id)
  return np.asarray(_generate(model, params, tokens, valid, rng, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p))


def sample_checkpoint(config, workdir: str, prompt: str, *, num_samples: int, max_new_tokens: int,
                      temperature: float, top_k: int, top_p: float) -> list[str]:
  """Continuations of prompt from the newest checkpoint in workdir (--mode=sample)."""
  from bigjax import sharding, train  # noqa: PLC0415 (decode itself needs no trainer)
  from bigjax.config import ConfigError  # noqa: PLC0415
  s = train.setup(config, workdir)
  tokenizer = s.dataset.tokenizer
  if tokenizer is None:
    raise ConfigError(f'--mode=sample needs a language model: data.name={config.data.name!r} is not text')
  with sharding.active(s.mesh, s.rules):
    state, _ = train.restore_newest(s, config, workdir)
    # Training text is documents joined by EOS: an empty prompt starts a new document.
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    new = sample(s.model, state.params, [ids] * num_samples, tokenizer.pad_id, max_new_tokens=max_new_tokens,
                 rng=jax.random.key(config.seed), temperature=temperature, top_k=top_k, top_p=top_p)
  texts = []
  for row in new.tolist():
    end = row.index(tokenizer.eos_id) if tokenizer.eos_id in row else len(row)  # a document ended
    texts.append(tokenizer.decode(row[:end]))
  return texts
