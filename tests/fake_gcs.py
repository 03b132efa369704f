"""A Cloud Storage bucket in this process's memory, for tests with no network.

One dict of objects ('bucket/name' -> bytes) seen two ways, as in production:
- by etils.epath, which sends gs:// paths to fsspec's 'gcs' filesystem (gcsfs on a TPU VM):
  `FakeGCS` stands in for it. Like GCS it has no directories (a folder exists when an object is
  under it), cannot append, and makes a write visible whole when the file closes;
- by TensorStore (Orbax's array reads and writes), which speaks Cloud Storage's JSON API over
  HTTP: `serve()` answers the requests TensorStore makes, on a loopback port that
  TENSORSTORE_GCS_HTTP_URL points it to.
"""

import io
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fsspec
from fsspec.spec import AbstractFileSystem

OBJECTS: dict[str, bytes] = {}
_GENERATIONS: dict[str, int] = {}
_LOCK = threading.Lock()


def _put(name: str, data: bytes) -> int:
  with _LOCK:
    OBJECTS[name] = bytes(data)
    _GENERATIONS[name] = _GENERATIONS.get(name, 0) + 1
    return _GENERATIONS[name]


def _delete(name: str) -> None:
  with _LOCK:
    OBJECTS.pop(name, None)


class _Upload(io.BytesIO):
  """A file being written: the object appears, whole, when it closes (as a GCS upload)."""

  def __init__(self, name: str):
    super().__init__()
    self.name = name

  def close(self) -> None:
    if not self.closed:
      _put(self.name, self.getvalue())
    super().close()


class FakeGCS(AbstractFileSystem):
  protocol = ('gs', 'gcs')
  root_marker = ''

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ('gs://', 'gcs://'):
      path = path.removeprefix(prefix)
    return path.strip('/')

  def _children(self, path: str) -> list[dict]:
    prefix = path + '/'
    found = {}
    for name in tuple(OBJECTS):
      if name.startswith(prefix):
        child, _, rest = name[len(prefix):].partition('/')
        full = prefix + child
        found[full] = {'name': full, 'type': 'directory', 'size': 0} if rest else \
            {'name': full, 'type': 'file', 'size': len(OBJECTS.get(name, b''))}
    return sorted(found.values(), key=lambda e: e['name'])

  def ls(self, path, detail=True, **kwargs):
    path = self._strip_protocol(path)
    if path in OBJECTS:
      entries = [self.info(path)]
    else:
      entries = self._children(path)
      if not entries and '/' in path:
        raise FileNotFoundError(path)
    return entries if detail else [e['name'] for e in entries]

  def info(self, path, **kwargs):
    path = self._strip_protocol(path)
    if path in OBJECTS:
      return {'name': path, 'type': 'file', 'size': len(OBJECTS[path])}
    if '/' not in path or self._children(path):  # a bucket, or a prefix of objects
      return {'name': path, 'type': 'directory', 'size': 0}
    raise FileNotFoundError(path)

  def _open(self, path, mode='rb', **kwargs):
    path = self._strip_protocol(path)
    if 'a' in mode or '+' in mode:
      raise NotImplementedError(f'{mode!r}: an object store cannot append or update in place')
    if 'w' in mode or 'x' in mode:
      return _Upload(path)
    if path not in OBJECTS:
      raise FileNotFoundError(path)
    return io.BytesIO(OBJECTS[path])

  def mkdir(self, path, create_parents=True, **kwargs):
    pass  # no directories: a folder exists once an object is written under it

  def makedirs(self, path, exist_ok=False):
    pass

  def rmdir(self, path):
    pass

  def rm_file(self, path):
    path = self._strip_protocol(path)
    if path in OBJECTS:
      _delete(path)

  def _rm(self, path):
    self.rm_file(path)

  def cp_file(self, path1, path2, **kwargs):
    path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
    if path1 in OBJECTS:  # a folder has nothing to copy of its own
      _put(path2, OBJECTS[path1])


def install() -> None:
  """gs:// paths in epath (through fsspec) go to FakeGCS from now on."""
  from etils.epath import backend

  for protocol in FakeGCS.protocol:
    fsspec.register_implementation(protocol, FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()


class _JsonApi(BaseHTTPRequestHandler):
  """The part of Cloud Storage's JSON API that TensorStore's gcs driver uses."""

  protocol_version = 'HTTP/1.1'

  def log_message(self, *args):
    pass

  def _reply(self, status: int, body: bytes = b'', headers=()):
    self.send_response(status)
    for key, value in headers:
      self.send_header(key, value)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, value: dict, headers=()):
    self._reply(status, json.dumps(value).encode(), [('Content-Type', 'application/json'), *headers])

  def _parse(self):
    url = urllib.parse.urlsplit(self.path)
    query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
    parts = url.path.split('/')
    return parts, query

  def _preconditions_fail(self, name: str, query: dict) -> bool:
    generation = _GENERATIONS.get(name) if name in OBJECTS else 0
    if 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != generation:
      return True
    return 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == generation

  def _metadata(self, name: str) -> dict:
    bucket, _, key = name.partition('/')
    return {'kind': 'storage#object', 'bucket': bucket, 'name': key, 'size': str(len(OBJECTS[name])),
            'generation': str(_GENERATIONS[name]), 'metageneration': '1'}

  def do_GET(self):  # noqa: N802, PLR0911 (http.server's name; one return per kind of request)
    parts, query = self._parse()
    # /storage/v1/b/{bucket}[/o[/{object}]]
    if len(parts) == 5:
      return self._json(200, {'kind': 'storage#bucket', 'name': parts[4]})
    bucket = parts[4]
    if len(parts) == 6:  # list
      prefix = query.get('prefix', '')
      start, end = query.get('startOffset', ''), query.get('endOffset')
      names = sorted(n[len(bucket) + 1:] for n in tuple(OBJECTS) if n.startswith(bucket + '/'))
      names = [n for n in names if n.startswith(prefix) and n >= start and (end is None or n < end)]
      return self._json(200, {'kind': 'storage#objects',
                              'items': [self._metadata(f'{bucket}/{n}') for n in names]})
    name = f'{bucket}/{urllib.parse.unquote("/".join(parts[6:]))}'
    if name not in OBJECTS:
      return self._json(404, {'error': {'code': 404, 'message': 'No such object'}})
    if self._preconditions_fail(name, query):
      return self._reply(304 if 'ifGenerationNotMatch' in query else 412)
    generation = [('x-goog-generation', str(_GENERATIONS[name]))]
    if query.get('alt') != 'media':
      return self._json(200, self._metadata(name), generation)
    data = OBJECTS[name]
    ranged = self.headers.get('Range')
    if ranged:
      first, _, last = ranged.removeprefix('bytes=').partition('-')
      first = int(first) if first else max(len(data) - int(last), 0)
      last = int(last) if last and ranged.removeprefix('bytes=')[0] != '-' else len(data) - 1
      return self._reply(206, data[first:last + 1], [
          *generation, ('Content-Range', f'bytes {first}-{min(last, len(data) - 1)}/{len(data)}')])
    return self._reply(200, data, generation)

  def do_POST(self):  # noqa: N802
    parts, query = self._parse()
    body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
    # /upload/storage/v1/b/{bucket}/o?uploadType=media&name=...
    name = f'{parts[5]}/{query["name"]}'
    if self._preconditions_fail(name, query):
      return self._reply(412)
    _put(name, body)
    self._json(200, self._metadata(name))

  def do_DELETE(self):  # noqa: N802
    parts, query = self._parse()
    name = f'{parts[4]}/{urllib.parse.unquote("/".join(parts[6:]))}'
    if name not in OBJECTS:
      return self._json(404, {'error': {'code': 404, 'message': 'No such object'}})
    if self._preconditions_fail(name, query):
      return self._reply(412)
    _delete(name)
    self._reply(204)


def serve() -> ThreadingHTTPServer:
  """The JSON API on a free loopback port, answering from a daemon thread."""
  server = ThreadingHTTPServer(('127.0.0.1', 0), _JsonApi)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server
