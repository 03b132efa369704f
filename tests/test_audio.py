"""The speech front end (bigjax/audio.py) against references built independently from scipy and formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from bigjax import audio
from bigjax.config import ConfigError

SR, N_FFT, WIN, HOP, MELS = 16000, 512, 400, 160, 80


def _slaney_hz_to_mel(hz):
  """Slaney's Auditory Toolbox scale, written out: 3 mel per 200 Hz up to 1 kHz, then 27 mel per 6.4x."""
  return hz * 3 / 200 if hz < 1000 else 15 + math.log(hz / 1000) * 27 / math.log(6.4)


def _slaney_mel_to_hz(mel):
  return mel * 200 / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)


def _reference_filterbank(sr, n_fft, n_mels, fmin=0.0, fmax=None):
  """Triangles on n_mels + 2 mel-spaced edges, each scaled by 2 / (upper - lower), one weight at a time."""
  fmax = sr / 2 if fmax is None else fmax
  lo, hi = _slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax)
  edges = [_slaney_mel_to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
  bank = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    lower, centre, upper = edges[m:m + 3]
    for k in range(n_fft // 2 + 1):
      f = k * sr / n_fft
      if lower <= f <= centre:
        w = (f - lower) / (centre - lower)
      elif centre < f <= upper:
        w = (upper - f) / (upper - centre)
      else:
        w = 0.0
      bank[k, m] = w * 2 / (upper - lower)
  return bank, edges


def _chirp_and_noise(seconds, seed=0):
  t = np.arange(int(seconds * SR)) / SR
  x = 0.5 * scipy.signal.chirp(t, 100, max(t[-1:], default=1.0), 7000, method='logarithmic')
  x += 0.05 * np.random.default_rng(seed).standard_normal(len(t))
  return np.round(np.clip(x, -1, 1 - 2 ** -15) * 32768).astype(np.int16)


def test_slaney_mel_scale_values():
  for hz, mel in [(1000, 15.0), (60, 0.9), (110, 1.65)]:  # librosa.hz_to_mel's documented values
    assert _slaney_hz_to_mel(hz) == pytest.approx(mel, abs=1e-12)
    assert audio._hz_to_mel(hz) == pytest.approx(mel, abs=1e-12)
  hz = np.array([0.0, 60.0, 999.0, 1000.0, 4321.0, 8000.0])
  np.testing.assert_allclose(audio._mel_to_hz(audio._hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize('sr,n_fft,n_mels,fmin,fmax',
                         [(16000, 512, 80, 0.0, None), (22050, 1024, 40, 60.0, 7600.0)])
def test_mel_filterbank_matches_slaney_formulas(sr, n_fft, n_mels, fmin, fmax):
  ours = audio.mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
  ref, edges = _reference_filterbank(sr, n_fft, n_mels, fmin, fmax)
  assert ours.shape == (n_fft // 2 + 1, n_mels) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6 * ref.max())
  df = sr / n_fft
  for m in range(n_mels):
    lower, centre, upper = edges[m:m + 3]
    peak = int(np.argmax(ours[:, m]))
    assert peak in (math.floor(centre / df), math.ceil(centre / df))  # the bins around the centre
    assert ours[:, m].max() <= 2 / (upper - lower) * (1 + 1e-6)  # the height the normalization sets
    assert np.all(ours[: math.floor(lower / df) + 1, m] == 0) and np.all(ours[math.ceil(upper / df):, m] == 0)
    if (upper - lower) / df >= 10:  # a well-sampled triangle: its area (sum times bin width) is 1
      assert ours[:, m].sum() * df == pytest.approx(1.0, rel=0.02)


def test_log_mel_matches_scipy_stft_reference():
  x = _chirp_and_noise(2.0)
  features, frame_lengths = audio.log_mel(x[None], np.array([len(x)]))
  window = scipy.signal.get_window('hann', WIN)  # periodic Hann, as scipy's default
  _, _, z = scipy.signal.stft(x / 32768.0, fs=SR, window=window, nperseg=WIN, noverlap=WIN - HOP, nfft=N_FFT,
                              boundary=None, padded=False, detrend=False, scaling='spectrum')
  power = np.abs(z * window.sum()) ** 2  # 'spectrum' scaling divided by the window's sum
  ref_mel = power.T @ _reference_filterbank(SR, N_FFT, MELS)[0]
  expected_frames = 1 + (len(x) - WIN) // HOP
  assert features.shape == (1, expected_frames, MELS) and features.dtype == jnp.float32
  assert ref_mel.shape == (expected_frames, MELS) and int(frame_lengths[0]) == expected_frames
  assert ref_mel.min() > 100 * 1e-6  # far above the floor, so the log never clips here
  # float32 FFT and matmul against a float64 reference: 1e-4 relative on energies, so 1e-4 absolute in log.
  np.testing.assert_allclose(np.exp(np.asarray(features[0], np.float64)), ref_mel, rtol=1e-4)
  np.testing.assert_allclose(features[0], np.log(ref_mel), rtol=0, atol=1e-4)


def test_log_mel_floor_and_float_input():
  silence = np.zeros((1, 4000), np.int16)
  features, _ = audio.log_mel(silence, np.array([4000]), floor=1e-6)
  np.testing.assert_allclose(features, np.log(1e-6), rtol=1e-6)
  x = _chirp_and_noise(0.5)
  from_int, _ = audio.log_mel(x[None], np.array([len(x)]))
  from_float, _ = audio.log_mel((x / 32768.0).astype(np.float32)[None], np.array([len(x)]))
  np.testing.assert_allclose(from_int, from_float, rtol=0, atol=1e-6)


def test_frame_lengths_and_padding_change_nothing():
  lengths = [16000, 9000, 400, 399, 0]
  utterances = [_chirp_and_noise(n / SR, seed=i) for i, n in enumerate(lengths)]
  batch = np.zeros((len(lengths), max(lengths)), np.int16)
  for i, u in enumerate(utterances):
    batch[i, :len(u)] = u
  batch[1, 9000:] = 12345  # garbage after an utterance's end must not leak into its valid frames
  features, frame_lengths = jax.jit(audio.log_mel)(batch, np.array(lengths))
  expected = [max(0, 1 + (n - WIN) // HOP) for n in lengths]
  assert frame_lengths.dtype == jnp.int32 and frame_lengths.tolist() == expected == [98, 54, 1, 0, 0]
  assert audio.num_frames(np.array(lengths), WIN, HOP).tolist() == expected
  assert audio.num_frames(jnp.array(lengths), WIN, HOP).tolist() == expected
  for i, (u, n) in enumerate(zip(utterances, expected)):
    assert np.all(np.asarray(features[i, n:]) == 0)
    if n:
      alone, alone_lengths = audio.log_mel(u[None], np.array([len(u)]))
      assert alone.shape[1] == int(alone_lengths[0]) == n
      np.testing.assert_allclose(features[i, :n], alone[0], rtol=1e-6, atol=1e-6)


def test_normalize_utterance_over_valid_frames_only():
  rng = np.random.default_rng(1)
  features = rng.normal(3.0, 2.5, (3, 50, 8)).astype(np.float32)
  frame_lengths = np.array([50, 20, 0])
  features[1, 20:] = 1e4  # padding content must not enter the statistics
  out = np.asarray(audio.normalize_utterance(features, frame_lengths))
  for i, n in enumerate(frame_lengths):
    assert np.all(out[i, n:] == 0)
    if n:
      np.testing.assert_allclose(out[i, :n].mean(axis=0), 0, atol=1e-5)
      np.testing.assert_allclose(out[i, :n].std(axis=0), 1, atol=1e-4)
      ref = (features[i, :n] - features[i, :n].mean(0)) / np.sqrt(features[i, :n].var(0) + 1e-5)
      np.testing.assert_allclose(out[i, :n], ref, rtol=1e-5, atol=1e-5)


def _augment_inputs(batch=256, frames=200):
  rng = np.random.default_rng(2)
  frame_lengths = rng.integers(40, frames + 1, batch)
  features = rng.normal(0, 1, (batch, frames, MELS)).astype(np.float32) + 10  # never 0 by chance
  features[np.arange(frames)[None, :] >= frame_lengths[:, None]] = 0
  return jnp.asarray(features), jnp.asarray(frame_lengths)


def test_spec_augment_is_keyed_and_deterministic_under_jit():
  features, frame_lengths = _augment_inputs(batch=16)
  key = jax.random.key(0)
  a = audio.spec_augment(key, features, frame_lengths)
  b = jax.jit(audio.spec_augment)(key, features, frame_lengths)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, jax.jit(audio.spec_augment)(key, features, frame_lengths))
  assert not np.array_equal(a, audio.spec_augment(jax.random.key(1), features, frame_lengths))
  masks = np.asarray(a) == 0
  assert len({masks[i].tobytes() for i in range(16)}) == 16  # masks differ across the batch


def test_spec_augment_masked_fractions_and_padding():
  features, frame_lengths = _augment_inputs()
  lengths = np.asarray(frame_lengths)
  valid = np.arange(features.shape[1])[None, :] < lengths[:, None]
  # One frequency band: width uniform in 0..27, so on average 13.5 of 80 bins.
  out = np.asarray(audio.spec_augment(jax.random.key(3), features, frame_lengths, freq_masks=1, time_masks=0))
  bins = (out[:, 0] == 0).sum(-1)
  assert bins.max() <= 27 and abs(bins.mean() / MELS - 13.5 / MELS) < 0.03
  zero_on_valid = [(out[i, valid[i]] == 0) for i in range(len(out))]  # a band spans every valid frame
  assert all(np.all(z.all(axis=0) | ~z.any(axis=0)) for z in zero_on_valid)
  # Two frequency bands and two time spans of at most 5% of each utterance: bounded and padding stays 0.
  out = np.asarray(audio.spec_augment(jax.random.key(4), features, frame_lengths))
  assert np.all(out[~valid] == 0)
  masked_bins = (out == 0).all(axis=1).sum(-1)
  masked_frames = ((out == 0).all(axis=2) & valid).sum(-1)
  assert np.all(masked_bins <= 54) and np.all(masked_frames <= 2 * np.floor(0.05 * lengths))
  assert 0.2 < masked_bins.mean() / MELS < 0.4 and 0.03 < (masked_frames / lengths).mean() < 0.06
  unmasked = (out != 0)
  np.testing.assert_array_equal(out[unmasked], np.asarray(features)[unmasked])
  # An int time_width is a number of frames; wider than the utterance, widths are uniform up to its length.
  out = np.asarray(audio.spec_augment(jax.random.key(5), features, frame_lengths, freq_masks=0,
                                      time_masks=1, time_width=500))
  masked_frames = (out == 0).all(axis=2) & valid
  assert 0.4 < (masked_frames.sum(-1) / lengths).mean() < 0.6 and np.all(out[~valid] == 0)


def _write(path, rate, data):
  scipy.io.wavfile.write(path, rate, data)
  return str(path)


def test_read_wav_round_trip_resample_and_channels(tmp_path):
  x = _chirp_and_noise(0.5)
  np.testing.assert_array_equal(audio.read_wav(_write(tmp_path / 'a.wav', SR, x)), x)
  t = np.arange(22050) / 22050  # one second of 440 Hz at 22.05 kHz
  sine = np.round(0.4 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
  y = audio.read_wav(_write(tmp_path / 'b.wav', 22050, sine))
  assert y.dtype == np.int16 and y.ndim == 1 and len(y) == SR
  assert np.argmax(np.abs(np.fft.rfft(y))) * SR / len(y) == 440
  assert abs(np.abs(y).max() / np.abs(sine).max() - 1) < 0.02
  stereo = np.stack([x, (x // 2).astype(np.int16)], axis=1)
  np.testing.assert_array_equal(audio.read_wav(_write(tmp_path / 'c.wav', SR, stereo)),
                                np.round((x.astype(float) + x // 2) / 2).astype(np.int16))
  as_float = (x / 32768.0).astype(np.float32)
  np.testing.assert_array_equal(audio.read_wav(_write(tmp_path / 'd.wav', SR, as_float)), x)
  as_uint8 = (x // 256 + 128).astype(np.uint8)
  np.testing.assert_array_equal(audio.read_wav(_write(tmp_path / 'e.wav', SR, as_uint8)), x // 256 * 256)


def test_read_wav_errors_are_one_line_naming_the_file(tmp_path):
  text = tmp_path / 'notes.wav'
  text.write_text('this is not audio\nat all\n')
  empty = _write(tmp_path / 'empty.wav', SR, np.zeros(0, np.int16))
  for path, words in [(str(tmp_path / 'missing.wav'), 'does not exist'),
                      (str(text), 'is not a readable WAV file ('), (empty, 'no samples')]:
    with pytest.raises(ConfigError) as e:
      audio.read_wav(path)
    message = str(e.value)
    assert '\n' not in message and path in message and words in message
