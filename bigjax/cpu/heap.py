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

`restart_with_huge_pages` goes one step further for a process that can be started again: glibc's
malloc.hugetlb tunable has the heap advised for transparent huge pages (where the kernel's THP
setting is `madvise`, the heap otherwise gets 4 KiB pages). A step that streams a gigabyte of
scratch space then misses the TLB on 2 MiB pages, not 4 KiB ones, and the heap's growth is a few
hundred page faults instead of a quarter of a million (a fault on fresh memory is slow in a VM
whose host has taken its free pages back). glibc reads tunables only when a process starts, so
it re-executes the same command line with the tunable set: only a script's own entry point may
call it (never a library, a notebook or a test, whose process it would replace).
"""

import ctypes
import os
import sys

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


_HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb'


def restart_with_huge_pages() -> None:
  """Re-executes this process's command line (sys.orig_argv) with glibc's heap on transparent huge
  pages, unless GLIBC_TUNABLES already sets glibc.malloc.hugetlb (=0 opts out), the kernel has THP
  off, it is not Linux, or BIGJAX_KEEP_HEAP=0. Call it first thing in a script's entry point:
  whatever ran before it runs again (the module docstring)."""
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  decided = any(t.partition('=')[0] == _HUGE_PAGES_TUNABLE for t in tunables.split(':'))  # =0: opted out
  if (os.environ.get('BIGJAX_KEEP_HEAP', '1') == '0' or decided
      or not sys.platform.startswith('linux') or not getattr(sys, 'orig_argv', None)):
    return
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
      if '[never]' in f.read():
        return
    ctypes.CDLL('libc.so.6').mallopt  # noqa: B018  (glibc: its tunables apply)
  except (OSError, AttributeError):
    return
  env = dict(os.environ, GLIBC_TUNABLES=':'.join(filter(None, (tunables, f'{_HUGE_PAGES_TUNABLE}=1'))))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
