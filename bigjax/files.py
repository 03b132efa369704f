"""Files under a workdir or data dir, on a local disk or in a bucket (gs://, s3://), through etils.epath.

Every host of a TPU pod slice must see the same workdir, so bigjax reads and writes it through
epath, as Orbax and TFDS do: a `gs://bucket/runs/x` workdir needs no mount. Files are kept whole
after a kill at any moment: the old version or the new one, never half of one.
"""

import contextlib
import io
import os
import uuid

from etils import epath


def path(name) -> epath.Path:
  """name as an epath.Path: a local path made absolute (Orbax needs it), a bucket URI as it is."""
  p = epath.Path(name)
  return p if is_remote(p) else p.expanduser().resolve()


def is_remote(name) -> bool:
  """Whether name is in an object store (gs://, s3://, ...) rather than on a filesystem."""
  return '://' in os.fspath(name)


def join(*parts) -> str:
  """parts joined into one path string: a bucket URI keeps its `gs://`."""
  return os.fspath(epath.Path(*parts))


@contextlib.contextmanager
def replaced_atomically(name, mode: str = 'w', newline: str | None = None):
  """Yields a file to write; when the block ends cleanly, it replaces name whole. If the block
  raises, name keeps its old contents. Text is UTF-8.

  On a filesystem: a temporary file beside name, then a rename (atomic on POSIX). Each call's
  temporary name is its own, so processes writing the same path at once (hosts sharing a disk)
  never write into one file; the last rename wins, whole. In an object store an upload is all or
  nothing and a rename is a copy, so the contents are buffered and sent in one upload, which a
  kill leaves undone: the old object stays."""
  text = 'b' not in mode
  if is_remote(name):
    buffer = io.StringIO(newline=newline or '\n') if text else io.BytesIO()
    yield buffer
    data = buffer.getvalue()
    with epath.Path(name).open('wb') as f:
      f.write(data.encode('utf-8') if text else data)
    return
  tmp = f'{os.fspath(name)}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    with open(tmp, mode, encoding='utf-8' if text else None, newline=newline) as f:
      yield f
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  os.replace(tmp, name)


def write_text(name, text: str) -> None:
  with replaced_atomically(name) as f:
    f.write(text)


class LineLog:
  """A text file that grows by lines (metrics.jsonl). On a filesystem each line is appended and
  flushed. An object store cannot append, so there the whole file is rewritten in one upload after
  each write: a kill leaves the lines of the last write, none cut short."""

  def __init__(self, name):
    self.path = epath.Path(name)
    self.remote = is_remote(self.path)
    if self.remote:
      self.text = self.path.read_text() if self.path.exists() else ''
    else:
      self.file = self.path.open('a')

  def write(self, text: str) -> None:
    if self.remote:
      self.text += text
      write_text(self.path, self.text)
    else:
      self.file.write(text)
      self.file.flush()

  def close(self) -> None:
    if not self.remote:
      self.file.close()


def cache_dir() -> str:
  """Where bigjax keeps what it can rebuild on this machine alone (the CPU's measured peak,
  compiled C++ kernels): $BIGJAX_CACHE_DIR, else $XDG_CACHE_HOME/bigjax, else ~/.cache/bigjax."""
  return os.environ.get('BIGJAX_CACHE_DIR') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'bigjax')
