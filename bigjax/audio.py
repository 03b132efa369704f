"""Speech front end: log-mel features, utterance normalization and SpecAugment on device; WAV reading on host.

The host moves only int16 samples; everything from framing to masking is pure `jnp` with static shapes, so
it runs inside the model's jitted forward pass. Filterbanks and windows are numpy constants built once.
Conventions follow librosa's defaults (Slaney mel scale and area normalization) without centre padding:
frame t covers samples [t * hop, t * hop + win), so padding an utterance never changes its valid frames.
"""

import io
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config import ConfigError

# Slaney's mel scale (the Auditory Toolbox, librosa's htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mel
_LOG_STEP = math.log(6.4) / 27.0  # 6.4x in frequency per 27 mel


def _hz_to_mel(hz):
  hz = np.asarray(hz, np.float64)
  linear = hz / _F_SP
  log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
  return np.where(hz >= _MIN_LOG_HZ, log, linear)


def _mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  linear = mel * _F_SP
  log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
  return np.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
  """(n_fft // 2 + 1, n_mels) float32: Slaney's mel scale (linear below 1 kHz, log above) and Slaney's area
  normalization (each triangle scaled by 2 / (its upper minus lower frequency)) -- librosa.filters.mel's
  defaults (htk=False, norm='slaney')."""
  fmax = sample_rate / 2 if fmax is None else fmax
  # Edges of the n_mels triangles: n_mels + 2 points evenly spaced in mel, back in Hz.
  edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
  freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (freqs - lower) / (centre - lower)
  falling = (upper - freqs) / (upper - centre)
  weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
  return weights.T.astype(np.float32)


def num_frames(lengths, win_length: int, hop_length: int):
  """valid frames of each utterance of `lengths` samples (works for numpy or jnp int arrays):
  max(0, 1 + (L - win) // hop)."""
  xp = jnp if isinstance(lengths, jax.Array) else np
  return xp.maximum(0, 1 + (lengths - win_length) // hop_length)


def _frames(x, win, hop, count):
  """(B, S) -> (B, count, win) overlapping frames by concatenating hop-sized chunks: reshapes and static
  slices only, which XLA fuses, instead of a gather over a (count, win) index array."""
  chunks = -(-win // hop)  # hop-sized chunks that one frame spans
  needed = (count - 1 + chunks) * hop
  x = jnp.pad(x, ((0, 0), (0, max(0, needed - x.shape[1]))))[:, :needed]
  x = x.reshape(x.shape[0], -1, hop)
  return jnp.concatenate([x[:, k:k + count] for k in range(chunks)], axis=-1)[..., :win]


def _valid(frame_lengths, count):
  """(B, count, 1) bool: which frames lie inside their utterance."""
  return (jnp.arange(count)[None, :] < frame_lengths[:, None])[..., None]


def log_mel(samples, lengths, *, sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80,
            fmin=0.0, fmax=None, floor=1e-6):
  """samples (B, S) int16 (or float in [-1, 1)); lengths (B,) int valid samples ->
  (features (B, T, n_mels) float32, frame_lengths (B,) int32) with T = num_frames(S).
  Frames t covers samples [t*hop, t*hop + win) (no centre padding), int16 scaled by 1/32768, a periodic Hann
  window of win_length zero-padded to n_fft, power spectrum |rfft|^2 (jnp.fft.rfft), times the mel
  filterbank, log(max(mel, floor)). Frames past an utterance's frame_length are set to 0."""
  if n_fft < win_length:
    raise ConfigError(f'n_fft={n_fft} is shorter than win_length={win_length}: use n_fft >= win_length')
  samples = jnp.asarray(samples)
  if jnp.issubdtype(samples.dtype, jnp.integer):
    samples = samples.astype(jnp.float32) / 32768.0
  samples = samples.astype(jnp.float32)
  # Plain integer arithmetic: a symbolic length (an export's) flows through it too.
  count = max(0, 1 + (samples.shape[1] - win_length) // hop_length)
  frame_lengths = jnp.minimum(num_frames(jnp.asarray(lengths), win_length, hop_length), count)
  frame_lengths = frame_lengths.astype(jnp.int32)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)  # periodic Hann
  frames = _frames(samples, win_length, hop_length, count) * window.astype(np.float32)
  spectrum = jnp.fft.rfft(frames, n=n_fft)  # zero-pads each frame to n_fft at the end
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
  # HIGHEST keeps the float32 sum on accelerators whose default matmul rounds inputs to bf16/tf32.
  mel = jnp.matmul(power, bank, precision=jax.lax.Precision.HIGHEST)
  features = jnp.log(jnp.maximum(mel, floor))
  return jnp.where(_valid(frame_lengths, count), features, 0.0), frame_lengths


def normalize_utterance(features, frame_lengths, eps=1e-5):
  """Per-utterance, per-mel-bin mean/variance normalization over each utterance's valid frames only; padded
  frames stay 0."""
  valid = _valid(frame_lengths, features.shape[1])
  n = jnp.maximum(frame_lengths, 1).astype(features.dtype)[:, None, None]
  mean = jnp.sum(jnp.where(valid, features, 0.0), axis=1, keepdims=True) / n
  centred = jnp.where(valid, features - mean, 0.0)
  var = jnp.sum(jnp.square(centred), axis=1, keepdims=True) / n
  return centred * jax.lax.rsqrt(var + eps)


def _spans(key, count, size, max_width):
  """(start, end), each (B, count) int32: `count` spans per row, width uniform in [0, min(max_width, size)],
  start uniform among the positions where the span fits in [0, size). size, max_width: (B,)."""
  k_width, k_start = jax.random.split(key)
  batch = size.shape[0]
  widest = jnp.minimum(max_width, size)[:, None]
  width = jnp.floor(jax.random.uniform(k_width, (batch, count)) * (widest + 1))
  width = jnp.minimum(width, widest).astype(jnp.int32)  # guards the float rounding at the top of the range
  room = (size[:, None] - width + 1).astype(jnp.float32)
  start = jnp.floor(jax.random.uniform(k_start, (batch, count)) * room).astype(jnp.int32)
  start = jnp.minimum(start, size[:, None] - width)  # guards the float rounding at the top of the range
  return start, start + width


def spec_augment(key, features, frame_lengths, *, freq_masks=2, freq_width=27, time_masks=2, time_width=0.05):
  """SpecAugment (Park et al. 2019) without time warping: freq_masks bands of up to freq_width mel bins and
  time_masks spans of up to time_width * (utterance's frame_length) frames (an int time_width: that many
  frames), each set to 0, uniform widths/starts drawn from jax.random with `key` (per example: masks differ
  across the batch). Pure jnp, jit-able, static shapes (build masks by comparing iota with drawn
  starts/ends; no dynamic slicing)."""
  batch, frames, bins = features.shape
  k_freq, k_time = jax.random.split(key)
  lengths = jnp.asarray(frame_lengths, jnp.int32)
  masked = jnp.zeros((batch, frames, bins), bool)
  if freq_masks:
    size = jnp.full((batch,), bins, jnp.int32)
    start, end = _spans(k_freq, freq_masks, size, jnp.full((batch,), freq_width, jnp.int32))
    iota = jnp.arange(bins)[None, :, None]
    band = jnp.any((start[:, None, :] <= iota) & (iota < end[:, None, :]), axis=-1)  # (B, bins)
    masked |= band[:, None, :]
  if time_masks:
    if isinstance(time_width, int | np.integer):
      widest = jnp.full((batch,), time_width, jnp.int32)
    else:
      widest = jnp.floor(time_width * lengths.astype(jnp.float32)).astype(jnp.int32)
    start, end = _spans(k_time, time_masks, lengths, widest)
    iota = jnp.arange(frames)[None, :, None]
    span = jnp.any((start[:, None, :] <= iota) & (iota < end[:, None, :]), axis=-1)  # (B, frames)
    masked |= span[:, :, None]
  return jnp.where(masked, jnp.zeros((), features.dtype), features)


def _as_int16_scale(data):
  """float64 samples on int16's scale (-32768..32767) from any dtype scipy.io.wavfile returns."""
  if data.dtype.kind == 'f':
    return data.astype(np.float64) * 32768.0
  if data.dtype.kind == 'u':  # 8-bit WAVs are unsigned with a 128 offset
    bits = 8 * data.dtype.itemsize
    return (data.astype(np.float64) - 2 ** (bits - 1)) * (32768.0 / 2 ** (bits - 1))
  return data.astype(np.float64) * (32768.0 / 2 ** (8 * data.dtype.itemsize - 1))


def read_wav(path: str | bytes, sample_rate: int = 16000) -> np.ndarray:
  """A WAV file's samples (path: its name, or its bytes) as 1-D int16 at sample_rate:
  scipy.io.wavfile.read; multi-channel -> mean over channels; float or int32/uint8 WAVs converted to
  int16's scale; a different rate resampled with scipy.signal.resample_poly (up/down from the gcd).
  Raises bigjax.config.ConfigError with ONE line naming the file for a missing file ('... does not
  exist') or anything not a readable WAV ('... is not a readable WAV file (<the reason>)'), and for an
  empty one."""
  import scipy.io.wavfile
  import scipy.signal

  if isinstance(path, bytes):
    path, source = 'in the request', io.BytesIO(path)
  elif not os.path.exists(path):
    raise ConfigError(f'audio file {path!r} does not exist: check the path')
  else:
    source = path
  try:
    rate, data = scipy.io.wavfile.read(source)
  except Exception as e:  # scipy raises ValueError, OSError, EOFError... for files it cannot parse
    reason = ' '.join(str(e).split()) or type(e).__name__
    raise ConfigError(f'audio file {path!r} is not a readable WAV file ({reason})') from None
  if data.size == 0:
    raise ConfigError(f'audio file {path!r} holds no samples: record or pick a non-empty WAV file')
  if data.dtype == np.int16 and data.ndim == 1 and rate == sample_rate:
    return data.copy()
  x = _as_int16_scale(data)
  if x.ndim == 2:
    x = x.mean(axis=1)
  if rate != sample_rate:
    g = math.gcd(int(rate), int(sample_rate))
    x = scipy.signal.resample_poly(x, sample_rate // g, rate // g)
  return np.clip(np.round(x), -32768, 32767).astype(np.int16)
