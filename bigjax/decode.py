"""Autoregressive sampling with a KV cache: greedy, temperature, top-k and top-p; jitted, batched.

  tokens = decode.sample(model, params, prompts, tokenizer, max_new_tokens=200, rng=key,
                         temperature=0.8, top_k=40, top_p=0.95)

Prompts of different lengths are left-padded into one batch: pads are marked
invalid, so no token attends to them, and positions count real tokens only.
The prompt fills the cache in one call; each new token is then one cached step.

`greedy` and `beam_search` decode any model given as `step_fn(tokens, cache, t) -> (logits, cache)`
(e.g. a seq2seq decoder over a cached encoder output): ids (B, max_length), each row ending at its EOS,
pad after. Beam search is the T5/flax-wmt algorithm: alive and finished sets of K hypotheses per example,
GNMT length penalty, cache rows reordered with the beams. A hypothesis at its length limit, or at
max_length, is forced to end: EOS keeps its model log-probability, so every output ends with EOS.
Callers jit them with step_fn closed over.
"""

import functools
from typing import NamedTuple

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


CANDIDATES = 64  # choose_rows's fast path: rows whose top_k is at most this sort only these tokens


def choose_rows(logits, key, temperature, top_k, top_p):
  """One token per row with each row's own options, all (B,) arrays (a served batch mixes requests):
  temperature 0 is greedy, top_k 0 and top_p 1 keep every token. A sampled row draws what
  jax.random.categorical(its key, filter_logits(its logits, ...)) draws, whatever else is in the batch:
  the Gumbel noise of every token comes from the row's key, and the top-p nucleus is taken after top-k.
  When every row's top_k is between 1 and CANDIDATES, only that many tokens are sorted (lax.top_k);
  a full sort of the vocabulary per row per step costs more than the model on a CPU."""
  batch, vocab = logits.shape
  scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
  noise = jax.vmap(lambda k: jax.random.gumbel(k, (vocab,)))(key)

  def among(values, index):  # values (B, N) descending, index (B, N) their token ids
    rank = jnp.arange(values.shape[1])[None, :]
    kept = (top_k[:, None] == 0) | (rank < top_k[:, None])
    cumulative = jnp.cumsum(jax.nn.softmax(jnp.where(kept, values, -jnp.inf), axis=-1), axis=-1)
    inside = jnp.concatenate([jnp.ones((batch, 1), bool), cumulative[:, :-1] < top_p[:, None]], axis=-1)
    noisy = jnp.where(kept & inside, values + jnp.take_along_axis(noise, index, axis=1), -jnp.inf)
    return jnp.take_along_axis(index, noisy.argmax(-1)[:, None], axis=1)[:, 0]

  def few():
    return among(*jax.lax.top_k(scaled, min(CANDIDATES, vocab)))

  def every():
    index = jnp.argsort(-scaled, axis=-1, stable=True)
    return among(jnp.take_along_axis(scaled, index, axis=1), index)

  fits = jnp.all((temperature == 0) | ((top_k > 0) & (top_k <= CANDIDATES)))
  sampled = jax.lax.cond(fits, few, every)
  return jnp.where(temperature > 0, sampled, logits.argmax(-1)).astype(jnp.int32)


def continue_prompts(model, params, tokens, valid, *, choose, xs):
  """New tokens (B, len(xs)) after left-padded prompts: choose(logits (B, V), x) -> (B,) ids, x the
  step's element of xs (a key, say)."""
  batch, width = tokens.shape
  cache = model.init(jax.random.key(0), jnp.zeros((batch, width + xs.shape[0]), jnp.int32),
                     decode=True)['cache']  # zeros, sized for prompt + continuation
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  logits, updated = model.apply({'params': params, 'cache': cache}, tokens, positions=positions, valid=valid,
                                decode=True, mutable=['cache'])
  next_position = positions[:, -1] + 1

  def step(carry, x):
    cache, logits, position = carry
    token = choose(logits, x)
    logits, updated = model.apply({'params': params, 'cache': cache}, token[:, None],
                                  positions=position[:, None], valid=jnp.ones((batch, 1), bool),
                                  decode=True, mutable=['cache'])
    return (updated['cache'], logits[:, -1], position + 1), token

  _, new_tokens = jax.lax.scan(step, (updated['cache'], logits[:, -1], next_position), xs)
  return new_tokens.T


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k', 'top_p'))
def _generate(model, params, tokens, valid, rng, *, max_new_tokens, temperature, top_k, top_p):
  return continue_prompts(model, params, tokens, valid, xs=jax.random.split(rng, max_new_tokens),
                          choose=lambda logits, rng: _choose(logits, rng, temperature, top_k, top_p))


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


def _limits(length_limit, batch_size: int, max_length: int):
  """(B,) int32: output tokens allowed per example, EOS included; max_length caps them all."""
  if length_limit is None:
    return jnp.full((batch_size,), max_length, jnp.int32)
  return jnp.clip(jnp.asarray(length_limit, jnp.int32), 1, max_length)


def greedy(step_fn, cache, batch_size: int, *, max_length: int, bos_id: int, eos_id: int, pad_id: int = 0,
           length_limit=None):
  """(B, max_length) int32 ids, the argmax each step; a row stops at its EOS (included), pad after.
  length_limit (B,) int32: output tokens allowed per example, EOS included; the last one is forced EOS."""
  limit = _limits(length_limit, batch_size, max_length)

  def body(state):
    t, token, cache, ids, done = state
    logits, cache = step_fn(token, cache, t)
    token = jnp.where(t + 1 >= limit, eos_id, jnp.argmax(logits, -1).astype(jnp.int32))
    token = jnp.where(done, pad_id, token)
    return t + 1, token, cache, ids.at[:, t].set(token), done | (token == eos_id)

  state = (jnp.int32(0), jnp.full((batch_size,), bos_id, jnp.int32), cache,
           jnp.full((batch_size, max_length), pad_id, jnp.int32), jnp.zeros((batch_size,), bool))
  return jax.lax.while_loop(lambda s: (s[0] < max_length) & ~s[4].all(), body, state)[3]


def _gather_beams(cache, rows, batch_axis: int):
  """The cache with its rows reordered: leaves with a batch axis are indexed by rows (N,) along it;
  smaller leaves (a per-layer index counter) are shared by all rows and stay as they are."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis) if x.ndim > batch_axis else x, cache)


def _length_penalty(length, alpha: float):
  return ((5.0 + length) / 6.0) ** alpha  # GNMT (Wu et al. 2016)


def _pick(x, index):
  """x (B, M, ...) at index (B, J) along axis 1: (B, J, ...)."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


class _Beams(NamedTuple):
  t: jax.Array  # () steps taken = tokens in every alive hypothesis
  last: jax.Array  # (B * K,) the newest token of every alive row, fed to step_fn
  cache: object  # the model's, one row per alive hypothesis
  alive_seqs: jax.Array  # (B, K, max_length) int32, pad after position t
  alive_logp: jax.Array  # (B, K) float32, descending; -inf: no hypothesis
  finished_seqs: jax.Array  # (B, K, max_length) int32, EOS included
  finished_scores: jax.Array  # (B, K) float32 log-prob / length penalty, descending


def _beam_step(step_fn, state: _Beams, limit, *, eos_id, alpha, cache_batch_axis) -> _Beams:
  batch_size, beam_size, _ = state.alive_seqs.shape
  logits, cache = step_fn(state.last, state.cache, state.t)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, beam_size, -1)
  vocab = logp.shape[-1]
  # At its length limit a hypothesis may only end; EOS keeps its own log-probability.
  forced = (state.t + 1 >= limit)[:, None, None] & (jnp.arange(vocab) != eos_id)
  candidates = (state.alive_logp[:, :, None] + jnp.where(forced, -jnp.inf, logp)).reshape(batch_size, -1)
  # 2K candidates: even when K of them end with EOS, K remain to stay alive.
  top_logp, top = jax.lax.top_k(candidates, 2 * beam_size)
  parent, token = top // vocab, (top % vocab).astype(jnp.int32)
  seqs = _pick(state.alive_seqs, parent).at[:, :, state.t].set(token)
  ends = token == eos_id

  alive_logp, keep = jax.lax.top_k(jnp.where(ends, -jnp.inf, top_logp), beam_size)
  rows = jnp.arange(batch_size)[:, None] * beam_size + _pick(parent, keep)
  # Old finished first: on a tie top_k keeps the lower index, so a finished set stops changing.
  scores = jnp.where(ends, top_logp / _length_penalty(state.t + 1, alpha), -jnp.inf)
  finished_scores, best = jax.lax.top_k(jnp.concatenate([state.finished_scores, scores], axis=1), beam_size)
  finished_seqs = _pick(jnp.concatenate([state.finished_seqs, seqs], axis=1), best)
  cache = _gather_beams(cache, rows.reshape(-1), cache_batch_axis)
  return _Beams(state.t + 1, _pick(token, keep).reshape(-1), cache, _pick(seqs, keep), alive_logp,
                finished_seqs, finished_scores)


def _beams_done(state: _Beams, limit, alpha: float):
  """(B,) bool: no alive hypothesis can still beat the worst finished one. Log-probs only fall, so the
  best alive one's log-prob under the most favourable penalty (shortest or longest length) bounds them."""
  best = state.alive_logp[:, 0]
  bound = jnp.maximum(best / _length_penalty(limit, alpha), best / _length_penalty(state.t + 1, alpha))
  return bound <= state.finished_scores[:, -1]


def beam_search(step_fn, cache, batch_size: int, *, beam_size: int, max_length: int, bos_id: int, eos_id: int,
                pad_id: int = 0, alpha: float = 0.6, length_limit=None, cache_batch_axis: int = 0):
  """(ids (B, max_length) int32, scores (B,) float32): the best finished hypothesis per example, EOS
  included, pad after, and its log-probability / GNMT length penalty ((5 + length) / 6) ** alpha.

  step_fn sees B * beam_size rows, example-major (row b * K + k is beam k of example b); the caller sizes
  the cache for them. Leaves of the cache with ndim > cache_batch_axis have their batch axis there.
  length_limit (B,) int32 as in greedy."""
  limit = _limits(length_limit, batch_size, max_length)
  seqs = jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32)
  # Only beam 0 starts alive: otherwise the K beams would stay K copies of one hypothesis.
  alive_logp = jnp.full((batch_size, beam_size), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
  bos = jnp.full((batch_size * beam_size,), bos_id, jnp.int32)
  state = _Beams(jnp.int32(0), bos, cache, seqs, alive_logp, seqs, jnp.full_like(alive_logp, -jnp.inf))
  step = functools.partial(_beam_step, step_fn, limit=limit, eos_id=eos_id, alpha=alpha,
                           cache_batch_axis=cache_batch_axis)

  def running(state):
    return (state.t < max_length) & ~_beams_done(state, limit, alpha).all()

  state = jax.lax.while_loop(running, step, state)
  return state.finished_seqs[:, 0], state.finished_scores[:, 0]


def seq2seq_generate(model, variables, source, *, max_length: int, beam_size: int, alpha: float, bos_id: int,
                     eos_id: int, pad_id: int = 0, length_limit=None):
  """Output ids (B, max_length) for source ids (B, S) from an encoder-decoder (models/seq2seq.py):
  beam search (greedy for beam_size 1) over the decoder's self-attention KV cache. The encoder,
  and every layer's cross-attention keys and values, run once per source."""
  batch, beams = source.shape[0], beam_size
  memory = model.apply(variables, source, method=model.encode)
  # Each example's beams are consecutive rows: the memory's batch axes repeat each row `beams` times.
  # (Keys and values carry a leading layer axis.)
  memory = {name: jnp.repeat(part, beams, axis=1 if name in ('key', 'value') else 0)
            for name, part in memory.items()}
  rows = batch * beams
  targets = jnp.zeros((rows, max_length), jnp.int32)  # the cache is sized for the longest output
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), None, targets, memory=memory, decode=True)['cache'])
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def step_fn(tokens, cache, t):
    logits, updated = model.apply({'params': variables['params'], 'cache': cache}, None, tokens[:, None],
                                  memory=memory, decode=True, positions=jnp.full((rows, 1), t),
                                  mutable=['cache'])
    return logits[:, 0], updated['cache']

  common = dict(max_length=max_length, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, length_limit=length_limit)
  if beams == 1:
    return greedy(step_fn, cache, batch, **common)
  # A scanned decoder stacks its cache on a leading layer axis.
  return beam_search(step_fn, cache, batch, beam_size=beams, alpha=alpha,
                     cache_batch_axis=1 if model.scan_layers else 0, **common)[0]
