"""Greedy decoding and beam search over toy models given as step functions: beam 1 against greedy,
search finding what greedy misses, cache reordering, length limits, the length penalty, layer-major caches."""

import jax
import jax.numpy as jnp
import numpy as np

from bigjax import decode

PAD, BOS, EOS, A, B, C, D = range(7)
VOCAB = 7


def table_model(table):
  """step_fn over a fixed table of logits indexed by [step, previous token]; its cache is the step counter
  of each row, which beam search reorders along with the beams."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, cache, t):
    return table[jnp.minimum(cache, len(table) - 1), tokens], cache + 1

  return step_fn


def probability_table(rows, length):
  """(length, VOCAB, VOCAB) log-probabilities: rows maps (t, previous token) to {token: probability};
  unlisted tokens share a tiny remainder, and EOS is near certain from t = length - 1."""
  table = np.full((length, VOCAB, VOCAB), np.log(1e-6), np.float32)
  table[length - 1:, :, EOS] = 0.0
  for (t, previous), probabilities in rows.items():
    for token, p in probabilities.items():
      table[t, previous, token] = np.log(p)
  return table


def run_greedy(step_fn, cache, batch, **kw):
  return np.asarray(jax.jit(lambda c: decode.greedy(step_fn, c, batch, bos_id=BOS, eos_id=EOS, **kw))(cache))


def run_beams(step_fn, cache, batch, **kw):
  ids, scores = jax.jit(lambda c: decode.beam_search(step_fn, c, batch, bos_id=BOS, eos_id=EOS, **kw))(cache)
  return np.asarray(ids), np.asarray(scores)


def test_beam_size_one_is_greedy_on_a_random_model():
  # Beam 1 keeps a runner-up EOS as a finished hypothesis, which greedy never sees: so EOS here is
  # either the clear argmax or far below the runner-up, and alpha = 0 compares plain log-probs.
  batch, rng = 16, np.random.default_rng(0)
  tables = rng.normal(size=(batch, 12, VOCAB, VOCAB)).astype(np.float32)  # a model of its own per example
  tables[..., [PAD, BOS]] = -10.0  # so a PAD in the output is padding
  tables[..., EOS] = np.where(rng.random(tables.shape[:-1]) < 0.15, 10.0, -10.0)

  def step_fn(tokens, cache, t):
    logits = jnp.asarray(tables)[cache['example'], cache['step'], tokens]
    return logits, {'example': cache['example'], 'step': cache['step'] + 1}

  cache = {'example': jnp.arange(batch), 'step': jnp.zeros((batch,), jnp.int32)}
  want = run_greedy(step_fn, cache, batch, max_length=10)
  ids, _ = run_beams(step_fn, cache, batch, beam_size=1, max_length=10, alpha=0.0)
  np.testing.assert_array_equal(ids, want)
  assert (want == EOS).any(axis=1).all() and (want[:, -1] != PAD).any()  # early EOS, and forced at the end
  assert len({tuple(row) for row in want.tolist()}) > batch // 2


def test_beam_search_finds_the_likelier_sequence_greedy_misses():
  # Greedy takes A (0.55) then splits three ways (0.34): 0.19 in all; B (0.45) then C (0.9) is 0.41.
  table = probability_table({(0, BOS): {A: 0.55, B: 0.45}, (1, A): {B: 0.34, C: 0.33, D: 0.33},
                             (1, B): {C: 0.9, D: 0.1}}, length=3)
  step_fn = table_model(table)
  assert run_greedy(step_fn, jnp.zeros((1,), jnp.int32), 1, max_length=5).tolist() == [[A, B, EOS, PAD, PAD]]
  for beam_size in (2, 3):
    ids, scores = run_beams(step_fn, jnp.zeros((beam_size,), jnp.int32), 1, beam_size=beam_size,
                            max_length=5, alpha=0.6)
    assert ids.tolist() == [[B, C, EOS, PAD, PAD]]
    np.testing.assert_allclose(scores, [np.log(0.45 * 0.9) / (8 / 6) ** 0.6], rtol=1e-4)


def random_weights(seed, max_length):
  """(max_length + 1, VOCAB, VOCAB): the logits each (history position, token) adds."""
  weights = np.random.default_rng(seed).normal(size=(max_length + 1, VOCAB, VOCAB)).astype(np.float32)
  weights[:2, :, EOS] -= 6.0  # rarely ending, so hypotheses grow long enough for their histories to matter
  return weights


def history_model(weights, batch_axis=0, layers=2):
  """step_fn whose logits are a function of each row's whole history (source, BOS, y0, ..., y[t-1]),
  kept in its cache: a beam reordered without its cache row would be scored on another beam's history.
  With batch_axis=1 the history has a leading layer axis, next to a per-layer step counter (layers,)."""
  weights = jnp.asarray(weights)

  def logits_of(history, last):
    seen = (jnp.arange(history.shape[-1]) <= last)[:, None]
    return jnp.sum(jnp.where(seen, weights[jnp.arange(history.shape[-1]), history], 0.0), axis=-2)

  def step_fn(tokens, cache, t):
    if batch_axis == 0:
      history = cache.at[:, t + 1].set(tokens)
      return logits_of(history, t + 1), history
    index = cache['index'][0]  # every layer's counter, as a scanned model would keep it
    history = cache['history'].at[:, :, index + 1].set(tokens)
    return logits_of(history[-1], index + 1), {'history': history, 'index': cache['index'] + 1}

  def initial_cache(sources, beams):
    """The cache for len(sources) examples: each one's source token, repeated per beam."""
    history = np.zeros((len(sources) * beams, len(weights)), np.int32)
    history[:, 0] = np.repeat(sources, beams)
    if batch_axis == 0:
      return history
    return {'history': np.stack([history] * layers), 'index': np.zeros((layers,), np.int32)}

  return step_fn, initial_cache


def rescore(weights, source, ids, alpha):
  """The log-probability of ids / length penalty, computed from scratch one prefix at a time."""
  history, logp = [source, BOS], 0.0
  for token in ids:
    logits = sum(weights[i, h] for i, h in enumerate(history)).astype(np.float64)
    logp += logits[token] - np.log(np.exp(logits).sum())
    if token == EOS:
      break
    history.append(token)
  return logp / ((5 + len(history) - 1) / 6) ** alpha


def test_beams_carry_their_own_cache_rows():
  weights, sources, beams = random_weights(1, max_length=8), np.arange(VOCAB), 3
  step_fn, initial_cache = history_model(weights)
  ids, scores = run_beams(step_fn, initial_cache(sources, beams), len(sources), beam_size=beams, max_length=8)
  assert (ids == EOS).any(axis=1).all() and len({tuple(row) for row in ids.tolist()}) > 3
  np.testing.assert_allclose(scores, [rescore(weights, *args, 0.6) for args in zip(sources, ids)], rtol=1e-4)


def test_length_limit_forces_eos():
  table = probability_table({}, length=8)
  table[:, :, EOS] = np.log(1e-6)  # never ends by itself
  table[:, :, A] = 0.0
  step_fn, limits = table_model(table), jnp.array([1, 3, 6], jnp.int32)
  want = [[EOS, PAD, PAD, PAD, PAD], [A, A, EOS, PAD, PAD], [A, A, A, A, EOS]]  # max_length 5 caps 6
  ids = run_greedy(step_fn, jnp.zeros((3,), jnp.int32), 3, max_length=5, length_limit=limits)
  assert ids.tolist() == want
  ids, _ = run_beams(step_fn, jnp.zeros((6,), jnp.int32), 3, beam_size=2, max_length=5, length_limit=limits)
  assert ids.tolist() == want


def test_length_penalty_alpha_favours_longer_hypotheses():
  # Ending at once: log 0.3 = -1.20. A, A, EOS: log(0.7 * 0.4) = -1.27, but -1.27 / (8/6)**2 = -0.72.
  table = probability_table({(0, BOS): {EOS: 0.3, A: 0.7}, (1, A): {A: 0.4, B: 0.2, C: 0.2, D: 0.2}},
                            length=3)
  step_fn, cache = table_model(table), jnp.zeros((2,), jnp.int32)
  ids, _ = run_beams(step_fn, cache, 1, beam_size=2, max_length=4, alpha=0.0)
  assert ids.tolist() == [[EOS, PAD, PAD, PAD]]
  ids, _ = run_beams(step_fn, cache, 1, beam_size=2, max_length=4, alpha=2.0)
  assert ids.tolist() == [[A, A, EOS, PAD]]


def test_cache_with_a_leading_layer_axis():
  weights, sources, beams = random_weights(2, max_length=8), np.arange(VOCAB), 4
  batch, results = len(sources), []
  for axis in (0, 1):
    step_fn, initial_cache = history_model(weights, batch_axis=axis)
    cache = initial_cache(sources, beams)
    results.append(run_beams(step_fn, cache, batch, beam_size=beams, max_length=8, cache_batch_axis=axis))
  (ids, scores), (layered_ids, layered_scores) = results
  np.testing.assert_array_equal(layered_ids, ids)
  np.testing.assert_allclose(layered_scores, [rescore(weights, *args, 0.6) for args in zip(sources, ids)],
                             rtol=1e-4)
