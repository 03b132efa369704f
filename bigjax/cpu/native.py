"""bigjax's C++ CPU kernels (XLA FFI handlers): compiled on first use, cached, registered with jax.

Built with the machine's g++ for its own CPU (-march=native) into files.cache_dir(), keyed by the
source, the flags, jaxlib and the CPU, so a fresh machine needs no build step and a changed source rebuilds.
Without a compiler (or if the build fails) `load` logs why once and returns False: callers keep an
XLA path for that, and for every other platform.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile

import jax
import jaxlib
from absl import logging

from bigjax import files

_HERE = os.path.dirname(os.path.abspath(__file__))
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')


def _cpu_id() -> str:
  """What -march=native compiles for: the CPU's model and feature flags."""
  try:
    with open('/proc/cpuinfo') as f:
      return ''.join(sorted({line for line in f if line.startswith(('model name', 'flags'))}))
  except OSError:
    return platform.processor()


def build(source: str) -> str:
  """The path of source's shared library, compiling it unless the cache has it (raises
  subprocess.CalledProcessError, with the compiler's stderr, if it does not compile)."""
  with open(source, 'rb') as f:
    code = f.read()
  key = hashlib.sha256(b'\0'.join([code, ' '.join(_FLAGS).encode(), jaxlib.__version__.encode(),
                                   _cpu_id().encode()])).hexdigest()[:16]
  name = os.path.splitext(os.path.basename(source))[0]
  library = os.path.join(files.cache_dir(), f'{name}-{key}.so')
  if not os.path.exists(library):
    os.makedirs(files.cache_dir(), exist_ok=True)
    logging.info('compiling %s (once per source and CPU) into %s', source, library)
    # Built beside its final name and renamed: a concurrent process never loads half a file. (A
    # unique temporary name, not files.replaced_atomically's fixed one: two processes may build at once.)
    fd, partial = tempfile.mkstemp(suffix='.so', dir=files.cache_dir())
    os.close(fd)
    try:
      subprocess.run(['g++', *_FLAGS, '-isystem', jax.ffi.include_dir(), source, '-o', partial],
                     check=True, capture_output=True, text=True)
      os.replace(partial, library)
    finally:
      if os.path.exists(partial):
        os.remove(partial)
  return library


@functools.cache
def load(name: str, handlers: tuple[str, ...]) -> bool:
  """Compiles bigjax/cpu/{name}.cc and registers each handler as a CPU FFI target of that
  name. False, after one warning, where it cannot be built."""
  try:
    library = ctypes.cdll.LoadLibrary(build(os.path.join(_HERE, f'{name}.cc')))
  except (OSError, subprocess.CalledProcessError) as error:
    detail = getattr(error, 'stderr', '') or str(error)
    logging.warning('%s.cc could not be built, so its XLA fallback runs instead (slower): %s',
                    name, detail.strip()[-2000:])
    return False
  for handler in handlers:
    jax.ffi.register_ffi_target(handler, jax.ffi.pycapsule(getattr(library, handler)), platform='cpu')
  return True
