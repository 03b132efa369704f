"""bigjax's HTTP model server: an export (bigjax/serving/load.py) behind FastAPI, with dynamic batching.

  python -m bigjax.serve --export=runs/imdb/export [--port=8000] [--max_batch=32] [--max_wait_ms=0]
  curl -s localhost:8000/v1/predict -H 'Content-Type: application/json' -d '{"texts": ["import os"]}'

Each request's items are prepared on the event loop (tokenized or decoded: cheap, and bounded by
--max_body_bytes), queued, and collected by one batcher task into batches of up to --max_batch items,
waiting at most --max_wait_ms after the first; `exp.run` pads each batch to a bucket compiled at start-up
and runs in one worker thread, so the event loop keeps accepting while the model computes. Errors are one
line of JSON, {"error": "..."}: malformed JSON 400; wrong types or missing fields 422; a body over
--max_body_bytes, more items than --max_batch or an input over the model's length 413; a body not received
within --timeout_s 408; an unknown path 404; an endpoint of another task 409 (it names the export's task
and its endpoint); a full queue 503 with Retry-After; no answer within --timeout_s 504 (its items are
dropped if they have not started). GET / is a page to try the model by hand, /docs the API.
"""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import html
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import prometheus_client as prom
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from bigjax.config import ConfigError
from bigjax.serving.load import BadInput, TooLarge

ENDPOINTS = {'classify': '/v1/predict', 'sample': '/v1/generate', 'generate': '/v1/generate',
             'transcribe': '/v1/transcribe'}


@dataclasses.dataclass(frozen=True)
class Settings:
  max_batch: int = 32
  max_wait_ms: float = 0.0  # Triton's default: a wait only delays a lone request; load fills the queue
  max_queue: int = 256  # items, not requests: what bounds the memory and the wait
  timeout_s: float = 30.0
  max_body_bytes: int = 1 << 20


class _Strict(BaseModel):
  model_config = ConfigDict(extra='forbid', strict=True)  # a misspelt field is an error, not a default


class PredictRequest(_Strict):
  texts: list[str] | None = Field(None, min_length=1, description='Texts to classify.', examples=[['hi']])
  images: list[str] | None = Field(None, min_length=1, description='Base64 PNG or JPEG files to classify.')

  @model_validator(mode='after')
  def _one_kind(self):
    if (self.texts is None) == (self.images is None):
      raise ValueError('give exactly one of "texts" (a list of strings) or "images" (a list of base64 files)')
    return self


class GenerateRequest(_Strict):
  """A language model continues `prompt`; a translation or summarization model reads `text` (either
  name works for either). The sampling fields are a language model's; beam_size, a seq2seq model's."""
  prompt: str | None = Field(None, description='The text to continue.')
  text: str | None = Field(None, description='The text to translate or summarize.')
  max_new_tokens: int | None = Field(None, ge=1, description='Default: the most the export allows.')
  temperature: float = Field(0.8, ge=0, description='0 is greedy.')
  top_k: int = Field(40, ge=0, description='Keep the k likeliest tokens (0: all).')
  top_p: float = Field(0.95, gt=0, le=1, description='Keep the smallest set with this probability.')
  beam_size: int | None = Field(None, ge=1, description='Default: the export\'s own.')
  seed: int = Field(0, ge=0, lt=2**31)

  @model_validator(mode='after')
  def _one_text(self):
    if (self.prompt is None) == (self.text is None):
      raise ValueError('give exactly one of "prompt" or "text"')
    return self


class TranscribeRequest(_Strict):
  audio: str = Field(description='A base64 WAV file.')


class _Metrics:
  """Prometheus metrics in a registry of their own, so that two apps in one process never collide."""

  def __init__(self, max_batch: int, queue_depth):
    self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter('bigjax_requests', 'HTTP requests answered, by endpoint and status.',
                                 ['endpoint', 'status'], registry=self.registry)
    self.latency = prom.Histogram('bigjax_request_seconds', 'Seconds from request to response.', ['endpoint'],
                                  buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                  registry=self.registry)
    self.batch_size = prom.Histogram('bigjax_batch_size', 'Items in each batch the model ran.',
                                     buckets=[2 ** i for i in range((max_batch - 1).bit_length() + 1)],
                                     registry=self.registry)
    prom.Gauge('bigjax_queue_depth', 'Items waiting for the batcher.',
               registry=self.registry).set_function(queue_depth)


def _reject(status: int, message: str, headers: dict | None = None) -> HTTPException:
  return HTTPException(status, message, headers=headers)


class Batcher:
  """Collects prepared items from concurrent requests into batches for `exp.run`, one batch at a time."""

  def __init__(self, exp, settings: Settings, metrics: _Metrics | None = None):
    self.exp, self.settings, self.metrics = exp, settings, metrics
    self.queue: asyncio.Queue | None = None
    self._executor = ThreadPoolExecutor(1, thread_name_prefix='bigjax-run')  # exp.run is not reentrant

  def depth(self) -> int:
    return self.queue.qsize() if self.queue else 0

  def start(self) -> None:
    self.queue = asyncio.Queue()
    self._task = asyncio.create_task(self._loop())

  async def stop(self) -> None:
    """Runs what is queued, then ends (uvicorn has already waited for the requests in flight)."""
    self.queue.put_nowait(None)
    await self._task
    self._executor.shutdown()

  async def submit(self, items: list) -> list[dict]:
    if self.depth() + len(items) > self.settings.max_queue:
      raise _reject(503, f'overloaded: {self.depth()} items are queued (--max_queue='
                    f'{self.settings.max_queue}); retry shortly', {'Retry-After': '1'})
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in items]
    for item, future in zip(items, futures):
      self.queue.put_nowait((item, future))
    try:
      async with asyncio.timeout(self.settings.timeout_s):
        return await asyncio.gather(*futures)
    except TimeoutError:  # gather cancels the futures: the batcher skips those not yet run
      raise _reject(504, f'no answer within --timeout_s={self.settings.timeout_s:g}') from None

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    stopping = False
    while not stopping:
      batch = [await self.queue.get()]
      deadline = loop.time() + self.settings.max_wait_ms / 1000
      while len(batch) < self.settings.max_batch and batch[-1] is not None:
        try:
          batch.append(self.queue.get_nowait())
        except asyncio.QueueEmpty:
          if loop.time() >= deadline:  # --max_wait_ms=0: run what is queued, no timer armed
            break
          try:
            batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
          except TimeoutError:
            break
      stopping = batch[-1] is None
      live = [(item, future) for item, future in batch[:len(batch) - stopping] if not future.done()]
      if live:
        await self._run(loop, live)

  async def _run(self, loop, live) -> None:
    if self.metrics:
      self.metrics.batch_size.observe(len(live))
    try:
      results = await loop.run_in_executor(self._executor, self.exp.run, [item for item, _ in live])
    except Exception as e:  # noqa: BLE001 (every request of the batch hears of it, the server goes on)
      results = [e] * len(live)
    for (_, future), result in zip(live, results):
      if not future.done():  # a request past its timeout has gone
        (future.set_exception if isinstance(result, Exception) else future.set_result)(result)


class _Guard:
  """ASGI middleware: counts and times every response, and reads each body whole before the app sees it,
  answering 413 past max_body_bytes (whatever Content-Length claims, chunked too) and 408 for a body not
  received within timeout_s, so a slow sender holds only its own connection."""

  def __init__(self, app, metrics: _Metrics, settings: Settings, paths: set):
    self.app, self.metrics, self.settings, self.paths = app, metrics, settings, paths

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    start, status = time.perf_counter(), [500]
    endpoint = scope['path'] if scope['path'] in self.paths else 'unknown'  # bounded label values

    async def counted_send(message):
      if message['type'] == 'http.response.start':
        status[0] = message['status']
      await send(message)
    try:
      body = await self._read(scope, receive)
      if isinstance(body, tuple):
        await JSONResponse({'error': body[1]}, body[0], {'Connection': 'close'})(scope, receive, counted_send)
      elif body is not None:
        replay = [{'type': 'http.request', 'body': body, 'more_body': False}]

        async def replayed():  # the body once, then the server's own events (a disconnect)
          return replay.pop() if replay else await receive()
        await self.app(scope, replayed, counted_send)
    finally:
      self.metrics.requests.labels(endpoint, str(status[0])).inc()
      self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

  async def _read(self, scope, receive):
    """The body; (status, message) to refuse it; None if the client left. A refused body is still read
    and dropped, up to 4 x max_body_bytes: closing a socket with unread data resets the connection, and
    the client would lose the 413."""
    limit = self.settings.max_body_bytes
    declared = int(dict(scope['headers']).get(b'content-length', 0))
    size, chunks = 0, []
    try:
      async with asyncio.timeout(self.settings.timeout_s):
        while declared <= 4 * limit:
          message = await receive()
          if message['type'] == 'http.disconnect':
            return None
          size += len(message.get('body', b''))
          if size <= limit:
            chunks.append(message.get('body', b''))
          if not message.get('more_body') or size > 4 * limit:
            break
    except TimeoutError:
      return 408, f'the body was not received within --timeout_s={self.settings.timeout_s:g}'
    if max(size, declared) > limit:
      return 413, f'the body is over --max_body_bytes={limit}; send fewer or smaller inputs'
    return b''.join(chunks)


def _decode(values: list[str], field: str) -> list[bytes]:
  try:
    return [base64.b64decode(v, validate=True) for v in values]
  except binascii.Error:
    raise _reject(422, f'{field}: each item must be a base64 string') from None


def _error_line(error: dict) -> str:
  where = '.'.join(str(part) for part in error.get('loc', ())[1:]) or 'the body'
  hint = ' (send a JSON object with Content-Type: application/json)' if error['type'] in (
      'model_attributes_type', 'dict_type') else ''
  message = error.get('msg', 'invalid').removeprefix('Value error, ')
  return f'{where}: {message}{hint}'.replace('\n', ' ')


def create_app(exp, settings: Settings = Settings()) -> FastAPI:
  """The app for a warmed export (exp.warm(settings.max_batch) already called)."""
  batcher = Batcher(exp, settings)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    batcher.start()
    yield
    await batcher.stop()

  app = FastAPI(title=f'bigjax: {exp.task}', lifespan=lifespan, strict_content_type=False,
                description=__doc__.split('\n\n', 2)[2])
  batcher.metrics = metrics = _Metrics(settings.max_batch, batcher.depth)

  async def answer(endpoint: str, items: list[dict]) -> list[dict]:
    if ENDPOINTS[exp.task] != endpoint:
      raise _reject(409, f'this server runs a {exp.task!r} export: use POST {ENDPOINTS[exp.task]}')
    if len(items) > settings.max_batch:
      raise _reject(413, f'{len(items)} inputs in one request; this server takes at most --max_batch='
                    f'{settings.max_batch}: split them')
    try:  # text is cheap to prepare; decoding an image or a WAV file stays off the event loop
      prepare = lambda: [exp.prepare(item) for item in items]
      files = any(isinstance(value, bytes) for item in items for value in item.values())
      prepared = await asyncio.to_thread(prepare) if files else prepare()
    except TooLarge as e:
      raise _reject(413, str(e)) from None
    except BadInput as e:
      raise _reject(422, str(e)) from None
    return await batcher.submit(prepared)

  @app.post('/v1/predict', summary='Classify texts or images: a label and every label\'s probability.')
  async def predict(request: PredictRequest) -> dict:
    items = [{'text': t} for t in request.texts] if request.texts is not None else [
        {'image': b} for b in _decode(request.images, 'images')]
    return {'predictions': await answer('/v1/predict', items)}

  @app.post('/v1/generate', summary='Continue a prompt (a language model), or translate or summarize a text.')
  async def generate(request: GenerateRequest) -> dict:
    text = request.prompt if request.prompt is not None else request.text
    most = exp.metadata.get('sample', {}).get('max_new_tokens', 64)
    item = {'prompt': text, **request.model_dump(include={'temperature', 'top_k', 'top_p', 'seed'}),
            'max_new_tokens': request.max_new_tokens or most}
    if exp.task == 'generate':
      item = {'text': text, 'beam_size': request.beam_size}
    return (await answer('/v1/generate', [item]))[0]

  @app.post('/v1/transcribe', summary='Transcribe a WAV file.')
  async def transcribe(request: TranscribeRequest) -> dict:
    return (await answer('/v1/transcribe', [{'audio': _decode([request.audio], 'audio')[0]}]))[0]

  @app.get('/healthz', summary='200 once the model is compiled and serving.')
  async def healthz() -> dict:
    return {'status': 'ok', 'task': exp.task, 'queued': batcher.depth()}

  @app.get('/v1/metadata', summary='The export\'s metadata.json and this server\'s settings.')
  async def metadata() -> dict:
    return {**exp.metadata, 'server': dataclasses.asdict(settings)}

  @app.get('/metrics', summary='Prometheus metrics: requests, latency, batch sizes, queue depth.')
  async def metrics_text() -> Response:
    return Response(prom.generate_latest(metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

  page = _page(exp)

  @app.get('/', response_class=HTMLResponse, include_in_schema=False)
  async def index() -> HTMLResponse:
    return HTMLResponse(page)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    message = {404: f'no such path: {request.url.path}', 405: f'{request.method} is not allowed on '
               f'{request.url.path}'}.get(e.status_code, str(e.detail))
    return JSONResponse({'error': message}, e.status_code, e.headers)

  @app.exception_handler(Exception)
  async def failed(request: Request, e: Exception) -> JSONResponse:
    return JSONResponse({'error': f'internal error ({type(e).__name__}): see the server\'s log'}, 500)

  @app.exception_handler(RequestValidationError)
  async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    errors = e.errors()
    if any(error['type'] == 'json_invalid' for error in errors):
      return JSONResponse({'error': 'malformed JSON: the body must be one JSON object'}, 400)
    return JSONResponse({'error': '; '.join(_error_line(error) for error in errors[:3])}, 422)

  app.add_middleware(_Guard, metrics=metrics, settings=settings,
                     paths={route.path for route in app.routes})
  return app


_PAGE = '''<!doctype html>
<html><head><meta charset="utf-8"><title>bigjax: {task}</title><link rel="icon" href="data:,"></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 2em auto"><h1>bigjax: {task}</h1>
<form id="form" data-endpoint="{endpoint}" data-field="{field}" data-list="{is_list}">{control}
<p><button type="submit">Send</button></p></form><pre id="answer" style="white-space: pre-wrap"></pre>
<script>
const form = document.getElementById('form'), out = document.getElementById('answer');
const value = input => input.type !== 'file' ? input.value : new Promise(done => {{
  const reader = new FileReader();  // a data: URL; the server wants the base64 after its comma
  reader.onload = () => done(reader.result.slice(reader.result.indexOf(',') + 1));
  reader.readAsDataURL(input.files[0]);
}});
const show = answer => answer.error ? 'error: ' + answer.error : answer.predictions ?
  answer.predictions.map(p => p.label + '\\n' + Object.entries(p.probabilities).sort((a, b) => b[1] - a[1])
    .map(([k, v]) => '  ' + k + ': ' + v.toFixed(4)).join('\\n')).join('\\n\\n') :
  answer.output ?? answer.transcript ?? JSON.stringify(answer);
form.addEventListener('submit', async event => {{
  event.preventDefault();
  const input = document.getElementById('input'), body = {{}};
  if (input.type === 'file' && !input.files.length) {{ out.textContent = 'choose a file first'; return; }}
  const v = await value(input);
  body[form.dataset.field] = form.dataset.list === 'true' ? [v] : v;
  out.textContent = '...';
  try {{
    const response = await fetch(form.dataset.endpoint, {{method: 'POST',
      headers: {{'Content-Type': 'application/json'}}, body: JSON.stringify(body)}});
    out.textContent = show(await response.json());
  }} catch (error) {{ out.textContent = 'error: ' + error; }}
}});
</script></body></html>
'''


def _page(exp) -> str:
  image = exp.task == 'classify' and 'image' in exp.metadata
  field, is_list = {'classify': ('images' if image else 'texts', 'true'), 'sample': ('prompt', 'false'),
                    'generate': ('text', 'false'), 'transcribe': ('audio', 'false')}[exp.task]
  control = ('<input id="input" type="file" accept="{}">'.format('image/*' if image else 'audio/wav')
             if image or exp.task == 'transcribe' else '<textarea id="input" rows="8" cols="80"></textarea>')
  return _PAGE.format(task=html.escape(exp.task), endpoint=ENDPOINTS[exp.task], field=field,
                      is_list=is_list, control=control)


def serve(exp, host: str = '127.0.0.1', port: int = 8000, settings: Settings = Settings(),
          describe: str = '') -> None:
  """Compiles every bucket, listens, and serves until SIGTERM or SIGINT, which stop accepting, answer the
  requests in flight and return. A port that cannot be bound raises ConfigError, before any compile."""
  start = time.perf_counter()
  sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    raise ConfigError(f'cannot listen on {host}:{port}: {e.strerror}; choose another --port') from None
  exp.warm(settings.max_batch)
  sock.listen(2048)  # before the line below, which tells clients (and tests) they may connect
  buckets = exp.buckets(settings.max_batch) if hasattr(exp, 'buckets') else None
  address = f'[{host}]' if ':' in host else host
  print(f'bigjax.serve: {describe or exp.task} ready in {time.perf_counter() - start:.1f} s, batches of '
        f'up to {settings.max_batch}{f" (buckets {buckets})" if buckets else ""}, at '
        f'http://{address}:{sock.getsockname()[1]}/', file=sys.stderr, flush=True)
  # Past limit_concurrency open connections uvicorn answers 503 itself: idle or slow clients cannot use up
  # the process's file descriptors.
  config = uvicorn.Config(create_app(exp, settings), log_level='warning', access_log=False,
                          timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                          limit_concurrency=max(64, 4 * settings.max_queue))
  # uvicorn re-raises the signal it handled once it has drained; the server has stopped cleanly by then,
  # and the process should exit 0, not die of the signal's default action.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  uvicorn.Server(config).run(sockets=[sock])
