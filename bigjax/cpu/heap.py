"""Keeps freed C-heap memory in the process, so XLA:CPU does not page its scratch space in anew
every step.

XLA:CPU allocates one scratch buffer per executable run (over a gigabyte for lm_gpt:small at batch
16) with malloc, from a worker thread. glibc serves a block that size with a fresh mmap and unmaps
it when the step ends (or, from the heap, trims it), so every step faults in and zeroes the whole
buffer again, hundreds of thousands of page faults and a tenth of the step in the kernel. With a
single malloc arena (the main heap), no mmap and no trimming, the freed buffer stays in the heap
and the next step reuses it. The cost is that a process's resident memory does not shrink after a
peak, which for a training or serving process is what it needs again next step; for anything else
(a notebook, a data loader) it is a cost with no gain, so nothing applies it on import.

It must run before any library starts threads (jax's CPU client, torch): a thread that already has
its own arena keeps it, and the worker threads started later share those arenas too. So the
callers (bigjax.main, the benchmarks) run it first thing, through
bigjax.cpu.keep_freed_memory_on_cpu. glibc only; elsewhere, or with BIGJAX_KEEP_HEAP=0, nothing
changes.
"""

import ctypes
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters; a trim
# threshold of -1 turns trimming off (a 2 GiB threshold, the largest int, still trims: the freed
# scratch buffer plus the step's other freed arrays pass it, and every step faults again)


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory; True if it did."""
  if os.environ.get('BIGJAX_KEEP_HEAP', '1') == '0':
    return False
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator is left alone
    return False
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
