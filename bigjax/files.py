"""Files that a kill at any moment leaves whole: the old version or the new one, never half of one."""

import contextlib
import os
import uuid


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = 'w', **open_kwargs):
  """Yields a new temporary file beside path; when the block ends cleanly, renames it onto path
  (atomic on POSIX). If the block raises, the temporary file is removed and path keeps its old
  contents. Each call's temporary name is its own, so processes writing the same path at once
  (hosts sharing a disk) never write into one file; the last rename wins, whole."""
  tmp = f'{path}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)


def cache_dir() -> str:
  """Where bigjax keeps what it can rebuild (the CPU's measured peak, compiled C++ kernels):
  $BIGJAX_CACHE_DIR, else $XDG_CACHE_HOME/bigjax, else ~/.cache/bigjax."""
  return os.environ.get('BIGJAX_CACHE_DIR') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'bigjax')
