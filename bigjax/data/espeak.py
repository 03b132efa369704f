"""English speech from eSpeak NG, offline: the `espeakng-loader` wheel's libespeak-ng called through ctypes.

The wheel ships the shared library and its voice data, so no system install is needed. `synthesize`
returns 16 kHz int16 speech that is a function of its arguments alone: the same text, voice, rate and
pitch give the same samples on every call, in any order, in any process.

Two things make that so. libespeak-ng keeps synthesis state in static variables that no API call
resets (the pitch flutter's phase, the gain control), so the same text spoken twice by one loaded copy
differs: the library is loaded afresh for each utterance (loading, initializing, terminating and
unloading it costs about 3 ms, less than synthesizing a sentence). And espeak_Initialize seeds its
noise generator (breathy voices such as f2) with the time: it is reseeded with a constant. The library
is not thread-safe: every call holds a lock.

  python -m bigjax.data.espeak --text "hello world" --voice en-us+f2 --out hello.wav [--rate 175 --pitch 50]
"""

import _ctypes
import ctypes
import functools
import importlib.metadata
import os
import threading

import numpy as np

from bigjax.config import ConfigError

SAMPLE_RATE = 16000
_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: samples come back through the callback, no sound device
_RATE, _PITCH = 1, 3  # espeak_PARAMETER values
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_TRIM_THRESHOLD = 200  # |sample| at or below this counts as silence (int16 scale)
_KEEP_SILENCE = 0.1  # seconds of silence kept before and after the speech
_SEED = 0  # the noise generators' seed

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()


def _paths() -> tuple[str, bytes]:
  import espeakng_loader  # noqa: PLC0415 (only needed to synthesize)
  return espeakng_loader.get_library_path(), espeakng_loader.get_data_path().encode()


@functools.cache
def _variants() -> frozenset:
  """The voice variants eSpeak NG knows: its voices/!v/ files."""
  return frozenset(os.listdir(os.path.join(_paths()[1].decode(), 'voices', '!v')))


def _run(use):
  """use(lib) on a freshly loaded and initialized libespeak-ng, unloaded afterwards (the caller holds
  _lock)."""
  library, data = _paths()
  lib = ctypes.CDLL(library)
  try:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    if lib.espeak_Initialize(_SYNCHRONOUS, 0, data, 0) <= 0:
      raise RuntimeError(f'espeak_Initialize failed on {data.decode()}: reinstall espeakng-loader')
    try:
      return use(lib)
    finally:
      lib.espeak_Terminate()
  finally:
    _ctypes.dlclose(lib._handle)  # the next load starts from the library's initial static state


def _speak(lib, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
  """(int16 samples at espeak's own rate, that rate) for one utterance."""
  chunks = []

  def collect(wav, n, events):
    del events
    if n > 0:
      chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0  # 0: go on synthesizing

  callback = _CALLBACK(collect)  # a local that outlives espeak_Synth, which is synchronous
  lib.espeak_SetSynthCallback(callback)
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  # espeak ignores a variant it does not know (names are case-sensitive): look it up.
  variant = voice.partition('+')[2]
  if lib.espeak_SetVoiceByName(voice.encode()) != 0 or variant and variant not in _variants():
    raise ConfigError(f"eSpeak NG has no voice {voice!r}: use 'accent+variant' from its lang/ and voices/!v/ "
                      "folders, e.g. 'en-us+f2'")
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_SetParameter(_RATE, int(rate), 0)
  lib.espeak_SetParameter(_PITCH, int(pitch), 0)
  # Breathy voices draw noise from espeak's generator, which espeak_Initialize seeds with the time,
  # and some noise sources from libc's rand().
  lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_ng_SetRandSeed(_SEED)
  ctypes.CDLL(None).srand(_SEED)
  lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                               ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
  data = text.encode() + b'\0'
  error = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
  if error != 0:
    raise RuntimeError(f'espeak_Synth failed ({error}) for {text!r}')
  wav = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
  return wav, lib.espeak_ng_GetSampleRate()


def _trim(wav: np.ndarray, sample_rate: int) -> np.ndarray:
  """The speech with _KEEP_SILENCE before and after it: what espeak had there, padded with zeros
  where it had less (it often starts speaking at the first sample)."""
  keep = int(_KEEP_SILENCE * sample_rate)
  wav = np.pad(wav, keep)
  loud = np.flatnonzero(np.abs(wav.astype(np.int32)) > _TRIM_THRESHOLD)
  return wav[loud[0] - keep:loud[-1] + 1 + keep] if len(loud) else wav[:0]


def synthesize(text: str, voice: str = 'en+m3', rate: int = 175, pitch: int = 50,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """`text` spoken by `voice` ('base+variant', e.g. 'en-us+f2') at `rate` words per minute and `pitch`
  (0..100): 1-D int16 samples at `sample_rate`, with leading and trailing silence trimmed to ~0.1 s."""
  import scipy.signal  # noqa: PLC0415
  with _lock:
    wav, native = _run(lambda lib: _speak(lib, text, voice, rate, pitch))
  if sample_rate != native:
    divisor = np.gcd(sample_rate, native)  # 16000 / 22050 -> 160 / 441
    wav = scipy.signal.resample_poly(wav.astype(np.float32), sample_rate // divisor, native // divisor)
    wav = np.clip(np.round(wav), -32768, 32767).astype(np.int16)
  return _trim(wav, sample_rate)


@functools.cache
def version() -> str:
  """The espeakng-loader wheel's version and eSpeak NG's own: 'espeakng-loader 0.2.4, eSpeak NG 1.52.0'."""
  def info(lib):
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()
  with _lock:
    own = _run(info)
  return f'espeakng-loader {importlib.metadata.version("espeakng-loader")}, eSpeak NG {own}'


def main(argv=None):
  import argparse  # noqa: PLC0415

  import scipy.io.wavfile  # noqa: PLC0415
  parser = argparse.ArgumentParser(description='Write English speech synthesized by eSpeak NG to a WAV file.')
  parser.add_argument('--text', required=True)
  parser.add_argument('--voice', default='en+m3', help="base voice + variant, e.g. 'en-us+f2'")
  parser.add_argument('--rate', type=int, default=175, help='words per minute')
  parser.add_argument('--pitch', type=int, default=50, help='0..100')
  parser.add_argument('--out', required=True, help='the .wav file to write (16 kHz, int16)')
  args = parser.parse_args(argv)
  try:
    wav = synthesize(args.text, args.voice, args.rate, args.pitch)
  except ConfigError as e:
    parser.error(str(e))  # exit status 2, as bigjax.main gives a config error
  scipy.io.wavfile.write(args.out, SAMPLE_RATE, wav)
  print(f'{args.out}: {len(wav) / SAMPLE_RATE:.2f} s of {args.voice} ({version()})')


if __name__ == '__main__':
  main()
