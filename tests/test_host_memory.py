"""The glibc malloc setting (bigjax/cpu/heap.py): a training process on the CPU backend keeps freed
heap memory, so a big buffer freed and allocated again (XLA:CPU's per-step scratch space) is reused
instead of being mapped and page-faulted in anew; `import bigjax` leaves the heap's settings alone."""

import os
import subprocess
import sys

import pytest

from helpers import REPO

# Runs `before` (code), then allocates 256 MiB, frees it, and prints how many more bytes the heap holds
# free than before the allocation: under glibc's defaults the buffer goes back to the kernel. (A
# difference: what `before` itself freed, a whole training run's worth, stays out of the count.)
_PROBE = """
import ctypes
{before}
import numpy as np
class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]
libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = MallInfo2
free_before = libc.mallinfo2().fordblks
buffer = np.ones(64 << 20, np.float32)
del buffer
print(libc.mallinfo2().fordblks - free_before)
"""

# A whole training run through the entry point, in this process, before the probe allocates.
_TRAIN = """
import sys
from absl import app
from bigjax import main
sys.argv = ['bigjax.main', '--config=experiments/digits_mlp.py', '--config.train.steps=2',
            '--config.data.data_dir={data_dir}', '--workdir={workdir}']
try:
  app.run(main.main, flags_parser=main.parse_flags)
except SystemExit as e:
  assert not e.code, e.code
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings only')


def _kept_free_bytes(before: str, **env) -> int:
  out = subprocess.run([sys.executable, '-c', _PROBE.format(before=before)], env=dict(os.environ, **env),
                       cwd=REPO, capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1])


@glibc_only
def test_importing_bigjax_leaves_the_malloc_settings_alone():
  """A notebook or a data loader that imports bigjax (and its models) keeps glibc's defaults."""
  assert _kept_free_bytes('import bigjax, bigjax.cpu, bigjax.models') < 64 << 20  # back to the kernel


@pytest.mark.slow
@glibc_only
def test_training_on_cpu_keeps_a_freed_buffer_in_the_heap(data_dir, tmp_path):
  train = _TRAIN.format(data_dir=data_dir, workdir=tmp_path / 'run')
  assert _kept_free_bytes(train) >= 256 << 20  # kept: the next step reuses its pages
  assert _kept_free_bytes(train, BIGJAX_KEEP_HEAP='0') < 64 << 20  # the opt-out


@pytest.mark.parametrize('platforms, on_cpu', [('cpu', True), ('tpu', False), ('cuda,cpu', False)])
def test_the_cpu_backend_is_told_without_starting_jax(platforms, on_cpu):
  code = 'import sys, bigjax.cpu; print(bigjax.cpu.will_run_on_cpu(), "jax" in sys.modules)'
  out = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, JAX_PLATFORMS=platforms),
                       capture_output=True, text=True, check=True)
  assert out.stdout.split() == [str(on_cpu), 'False']
