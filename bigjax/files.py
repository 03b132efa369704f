"""Files that a kill at any moment leaves whole: the old version or the new one, never half of one."""

import contextlib
import os


@contextlib.contextmanager
def replaced_atomically(path: str, mode: str = 'w', **open_kwargs):
  """Yields open(path + '.tmp', mode); when the block ends cleanly, renames it onto path (atomic on
  POSIX). If the block raises, the temporary file is removed and path keeps its old contents."""
  tmp = path + '.tmp'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)
