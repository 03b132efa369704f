"""Serves an export over HTTP (bigjax/serving/server.py): FastAPI, dynamic batching, Prometheus metrics.

  python -m bigjax.serve --export=DIR (or --workdir=RUN) [--host=127.0.0.1] [--port=8000]
      [--max_batch=32] [--max_wait_ms=0] [--max_queue=256] [--timeout_s=30] [--max_body_bytes=1048576]

--workdir serves RUN/export, exporting the run's newest checkpoint there first if it holds none
(python -m bigjax.export). Every bucket shape a batch of up to --max_batch pads to is compiled before
the server listens, so no request waits for a compile; one line on stderr then says what was loaded, the
buckets and the URL. Open it
in a browser to try the model, or /docs for the API. SIGTERM or Ctrl-C stops accepting, answers the
requests in flight, and exits 0. Bad flags or a missing export: one line on stderr, exit status 2.
"""

import os
import sys

from absl import app, flags

from bigjax.config import ConfigError, fail

_EXPORT = flags.DEFINE_string('export', None, 'An export folder (python -m bigjax.export writes one).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A run folder: serves RUN/export, exporting it first if '
                               'needed.')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on; 0.0.0.0 opens it to the network.')
_PORT = flags.DEFINE_integer('port', 8000, 'Port to listen on (0: any free port, printed at start).')
_MAX_BATCH = flags.DEFINE_integer('max_batch', 32, 'Most items in one model call, and in one request.')
_MAX_WAIT_MS = flags.DEFINE_float('max_wait_ms', 0.0, 'How long a batch waits for more items after its '
                                  'first. 0: it runs at once with what is queued; under load the queue fills '
                                  'while the model runs the batch before.')
_MAX_QUEUE = flags.DEFINE_integer('max_queue', 256, 'Items queued at most; beyond it, 503 with Retry-After.')
_TIMEOUT_S = flags.DEFINE_float('timeout_s', 30.0, 'A request not answered within this is answered 504 '
                                '(and a body not received within it, 408).')
_MAX_BODY_BYTES = flags.DEFINE_integer('max_body_bytes', 1 << 20, 'Larger request bodies are answered 413.')


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])


def check_settings() -> None:
  if _MAX_BATCH.value < 1 or _MAX_QUEUE.value < _MAX_BATCH.value:
    raise ConfigError('--max_batch must be >= 1 and --max_queue >= --max_batch')
  if _MAX_WAIT_MS.value < 0 or _TIMEOUT_S.value <= 0 or _MAX_BODY_BYTES.value < 1:
    raise ConfigError('--max_wait_ms must be >= 0, --timeout_s > 0 and --max_body_bytes >= 1')
  if not 0 <= _PORT.value < 65536:
    raise ConfigError(f'--port={_PORT.value} is not a port: give 0..65535')


def export_folder() -> str:
  """--export, or --workdir's export (made now if the run has none)."""
  if (_EXPORT.value is None) == (_WORKDIR.value is None):
    raise ConfigError('give one of --export=DIR (an export folder) or --workdir=RUN (a training run)')
  path = _EXPORT.value or os.path.join(_WORKDIR.value, 'export')
  if os.path.exists(os.path.join(path, 'metadata.json')):
    if _WORKDIR.value is not None:
      _warn_if_stale(path, _WORKDIR.value)
    return path
  if _EXPORT.value is not None:
    raise ConfigError(f'--export={path} holds no export (no metadata.json): make one with '
                      f'python -m bigjax.export --workdir=RUN --out={path}')
  if not os.path.isdir(_WORKDIR.value):
    raise ConfigError(f'--workdir={_WORKDIR.value} does not exist (paths are relative to {os.getcwd()})')
  from bigjax import export
  print(f'bigjax.serve: {path} holds no export; exporting {_WORKDIR.value} there first', file=sys.stderr,
        flush=True)
  return export.export(workdir=_WORKDIR.value, out=path)


def _warn_if_stale(path: str, workdir: str) -> None:
  """One line on stderr when the run has trained past its export: the server still serves the export."""
  import json  # noqa: PLC0415
  with open(os.path.join(path, 'metadata.json')) as f:
    exported = json.load(f).get('step')
  steps = [int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints')) if name.isdigit()] \
      if os.path.isdir(os.path.join(workdir, 'checkpoints')) else []
  if steps and exported is not None and max(steps) > exported:
    print(f'bigjax.serve: warning: {path} is step {exported}; {workdir} has trained to step {max(steps)}. '
          f'Serving step {exported}: run python -m bigjax.export --workdir={workdir} for the newest',
          file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    check_settings()
    path = export_folder()
    from bigjax.serving import load, server  # jax loads only for valid flags
    settings = server.Settings(_MAX_BATCH.value, _MAX_WAIT_MS.value, _MAX_QUEUE.value, _TIMEOUT_S.value,
                               _MAX_BODY_BYTES.value)
    try:
      exp = load.load(path)
    except (OSError, ValueError) as e:
      raise ConfigError(f'--export={path} could not be loaded: {str(e).splitlines()[0]}') from None
    except KeyError as e:  # an export older than this bigjax
      raise ConfigError(f'--export={path} could not be loaded: its metadata.json has no {e}; export the '
                        f'run again with python -m bigjax.export') from None
    meta = exp.metadata
    describe = f'{exp.task} export {path} ({meta.get("model", "a model")}, step {meta.get("step", "?")})'
    server.serve(exp, _HOST.value, _PORT.value, settings, describe)
  except ConfigError as e:
    fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
