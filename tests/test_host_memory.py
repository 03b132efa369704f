"""`import bigjax` keeps freed heap memory, so a big buffer freed and allocated again (XLA:CPU's
per-step scratch space) is reused instead of being mapped and page-faulted in anew."""

import os
import subprocess
import sys

import pytest

# Allocates 256 MiB, frees it, and prints how many of those bytes the heap still holds, free.
_PROBE = """
import ctypes
import bigjax
import numpy as np
class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]
libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = MallInfo2
buffer = np.ones(64 << 20, np.float32)
del buffer
print(libc.mallinfo2().fordblks)
"""


def _kept_free_bytes(keep: bool) -> int:
  env = dict(os.environ, BIGJAX_KEEP_HEAP='1' if keep else '0')
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings only')
def test_a_freed_buffer_stays_in_the_heap_for_reuse():
  assert _kept_free_bytes(keep=False) < 64 << 20  # glibc's default: unmapped, back to the kernel
  assert _kept_free_bytes(keep=True) >= 256 << 20  # kept: the next step reuses its pages
