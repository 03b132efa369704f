"""The HTTP server (bigjax/serving/server.py, python -m bigjax.serve) as a client sees it: batching,
bad and hostile requests, overload, SIGTERM, the page, the metrics, the command line's errors.

The fast tests serve FakeExport, a few lines with load.Export's interface, so that no test here waits
for a compile; the slow one serves a real export. Run as a script, this file serves the fake:

  python tests/test_serving.py TASK DELAY_S '{"max_batch": 8, ...}'
"""

import asyncio
import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeExport:
  """load.Export's interface: prepare checks an item as load.py does; run sleeps `delay` (the model's
  compute) and answers each item with what identifies it and the size of the batch it ran in."""

  def __init__(self, task: str = 'classify', delay: float = 0.0):
    self.task, self.delay = task, delay
    self.metadata = {'task': task, 'labels': ['even', 'odd'], 'step': 7, 'model': 'fake',
                     'sample': {'max_new_tokens': 16, 'max_prompt_tokens': 100}}

  def prepare(self, item: dict) -> dict:
    from bigjax.serving import load
    if 'image' in item:
      raise load.BadInput('this model classifies text: send texts, not images')
    text = item.get('text', item.get('prompt'))
    if not text:
      raise load.BadInput('an empty text')
    if len(text) > 1000:
      raise load.TooLarge(f'the text is {len(text)} tokens; this model reads at most 1000')
    return item

  def warm(self, max_batch: int) -> None:
    pass

  def run(self, prepared: list) -> list[dict]:
    time.sleep(self.delay)
    if self.task == 'classify':
      return [{'label': self.metadata['labels'][len(p['text']) % 2], 'echo': p['text'],
               'probabilities': {'even': 0.5, 'odd': 0.5}, 'batch': len(prepared)} for p in prepared]
    return [{'output': json.dumps(p, sort_keys=True), 'batch': len(prepared)} for p in prepared]


def start_server(log_path, task='classify', delay=0.0, **settings):
  """A fake-export server subprocess on a free loopback port, starting: (process, log path); wait_ready
  gives its port."""
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')])}
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, __file__, task, str(delay), json.dumps(settings)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, log_path


def wait_ready(proc, log_path, timeout=120) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(log_path) as f:
      text = f.read()
    if found := re.search(r'ready in .* at http://127\.0\.0\.1:(\d+)/', text):
      return int(found.group(1))
    if proc.poll() is not None:
      raise AssertionError(f'the server exited with {proc.returncode}:\n{text[-3000:]}')
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f'the server did not start:\n{text[-3000:]}')


def stop(proc) -> int:
  proc.send_signal(signal.SIGTERM)
  return proc.wait(timeout=30)


def call(port, method, path, body=None, timeout=30):
  """(status, decoded JSON or text, headers)."""
  conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
  data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
  conn.request(method, path, body=data, headers={'Content-Type': 'application/json'} if data else {})
  response = conn.getresponse()
  text = response.read().decode()
  conn.close()
  is_json = response.getheader('Content-Type', '').startswith('application/json')
  return response.status, json.loads(text) if is_json else text, response


def raw(port, data: bytes, timeout=30) -> int:
  """Sends bytes as they are; the status of the answer."""
  with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
    sock.sendall(data)
    answer = b''
    while b'\r\n' not in answer:
      chunk = sock.recv(65536)
      assert chunk, f'connection closed with no answer to {data[:80]!r}'
      answer += chunk
  return int(answer.split()[1])


def request(path='/v1/predict', body=b'', method='POST', headers=('Content-Type: application/json',),
            length=True) -> bytes:
  body = body if isinstance(body, bytes) else json.dumps(body).encode()
  lines = [f'{method} {path} HTTP/1.1', 'Host: 127.0.0.1', 'Connection: close', *headers]
  lines += [f'Content-Length: {len(body)}'] if length else []
  return ('\r\n'.join(lines) + '\r\n\r\n').encode() + body


def chunked(body: bytes, size=8192) -> bytes:
  parts = [b'%x\r\n%s\r\n' % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
  return request(body=b''.join(parts) + b'0\r\n\r\n', headers=('Transfer-Encoding: chunked',), length=False)


LIMIT = 65536  # --max_body_bytes of the shared server

HOSTILE = [  # (request bytes, the status it must get)
    (request(body=b'{"texts": ['), 400), (request(body=b'not json'), 400), (request(body=b'\xff\xfe{'), 400),
    (request(body=b'[' * 40000), 400), (request(body=b'{"texts": ["a"]} and more'), 400),
    (request(body={'texts': 'a'}), 422), (request(body={'texts': [1]}), 422),
    (request(body={'texts': []}), 422), (request(body={}), 422), (request(body=[]), 422),
    (request(body=b'null'), 422),
    (request(body={'texts': ['a'], 'admin': True}), 422), (request(body={'images': ['%%%']}), 422),
    (request(body={'images': ['AAAA']}), 422), (request(body={'texts': ['']}), 422),
    (request(body={'texts': [{'$ne': 1}]}), 422), (request(body={'texts': ['a'], 'images': ['AAAA']}), 422),
    (request(body=b'texts=a', headers=('Content-Type: application/x-www-form-urlencoded',)), 422),
    (request(body={'texts': ['a' * (LIMIT + 1)]}), 413),
    (chunked(json.dumps({'texts': ['a' * 3 * LIMIT]}).encode()), 413),
    (request(headers=('Content-Length: 999999999999',), length=False), 413),
    (request(body={'texts': ['a'] * 9}), 413), (request(body={'texts': ['a' * 1001]}), 413),
    (request('/admin', method='GET'), 404), (request('/v1/predict/../../etc/passwd', method='GET'), 404),
    (request('/' + 'x' * 4000), 404), (request('/%00'), 404), (request('/v1/predict', method='GET'), 405),
    (request('/', method='DELETE'), 405), (b'GARBAGE\r\n\r\n', 400),
    (request(headers=('X-Junk: ' + 'j' * 20000,)), 422),  # no body
    (request('/v1/generate', {'prompt': 'a'}), 409), (request('/v1/transcribe', {'audio': 'AAAA'}), 409),
]


def slow_sender(port, statuses, drip: bool) -> None:
  """Sends the headers and a little of the body, then stalls (or drips a byte at a time)."""
  with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:
    headers = ('Content-Type: application/json', 'Content-Length: 100')
    sock.sendall(request(body=b'{"texts": ["a', headers=headers, length=False))
    answer, chunk = b'', b'-'
    while b'\r\n' not in answer and chunk:
      if drip:
        sock.sendall(b'a')
        sock.settimeout(0.3)
      try:
        chunk = sock.recv(65536)
        answer += chunk
      except TimeoutError:
        continue
  statuses.append(int(answer.split()[1]) if answer else None)


def rss_mb(pid) -> float:
  with open(f'/proc/{pid}/status') as f:
    return int(re.search(r'VmRSS:\s+(\d+)', f.read()).group(1)) / 1024


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
  """Fake-export server subprocesses, started together (their imports overlap): `shared` for most tests,
  with small limits so that hostile requests are cheap; `draining` for SIGTERM."""
  folder = tmp_path_factory.mktemp('serving')
  started = {
      'shared': start_server(folder / 'shared.log', delay=0.02, max_batch=8, max_queue=64, timeout_s=2,
                             max_body_bytes=LIMIT),
      'draining': start_server(folder / 'draining.log', delay=0.4, max_batch=4),
      # 4 x max_queue = 64 connections at most, and a timeout that outlasts a busy machine's slowness
      'limited': start_server(folder / 'limited.log', max_batch=4, max_queue=16, timeout_s=60)}
  try:
    yield {name: (proc, wait_ready(proc, log)) for name, (proc, log) in started.items()}
  finally:
    statuses = {name: stop(proc) if proc.poll() is None else proc.returncode for name, (proc, _) in
                started.items()}
  assert statuses == {'shared': 0, 'draining': 0, 'limited': 0}


@pytest.fixture
def server(servers):
  return servers['shared']


@pytest.fixture(scope='module')
def slow_sampler():
  """A language model's fake whose batches take 1 s, served by a thread of this process: (server, port)."""
  import uvicorn

  from bigjax.serving import server as serving
  sock = socket.create_server(('127.0.0.1', 0))
  settings = serving.Settings(max_batch=2, max_queue=4, timeout_s=1.5)
  app = uvicorn.Server(uvicorn.Config(serving.create_app(FakeExport('sample', 1.0), settings),
                                      log_level='warning'))
  thread = threading.Thread(target=app.run, kwargs={'sockets': [sock]})
  thread.start()
  while not app.started:
    time.sleep(0.01)
  yield app, sock.getsockname()[1]
  app.should_exit = True
  thread.join(timeout=30)


def test_batches_and_answers_each_request_its_own(server):
  _, port = server
  barrier = threading.Barrier(24)

  def ask(i):
    barrier.wait()
    return call(port, 'POST', '/v1/predict', {'texts': [f'r{i}', f'r{i}-b']})
  with ThreadPoolExecutor(24) as pool:
    answers = list(pool.map(ask, range(24)))
  batches = []
  for i, (status, answer, _) in enumerate(answers):
    assert status == 200, answer
    assert [p['echo'] for p in answer['predictions']] == [f'r{i}', f'r{i}-b']
    assert [p['label'] for p in answer['predictions']] == [['even', 'odd'][len(f'r{i}') % 2]] * 2
    batches += [p['batch'] for p in answer['predictions']]
  assert max(batches) > 2, batches  # items of several requests ran together
  assert max(batches) <= 8


@pytest.mark.parametrize('wait_ms, batches', [(0, [1, 1]), (500, [2, 2])])
def test_a_batch_waits_up_to_max_wait_ms_for_more_items(wait_ms, batches):
  """--max_wait_ms=0 (the default) runs the first item at once and the second, 20 ms later, in the next
  batch; a 500 ms wait takes both into one."""
  from bigjax.serving import server as serving

  async def two_requests():
    batcher = serving.Batcher(FakeExport(delay=0.1), serving.Settings(max_batch=8, max_wait_ms=wait_ms))
    batcher.start()
    first = asyncio.create_task(batcher.submit([{'text': 'a'}]))
    await asyncio.sleep(0.02)
    second = await batcher.submit([{'text': 'bb'}])
    answers = [(await first)[0], second[0]]
    await batcher.stop()
    return answers
  answers = asyncio.run(two_requests())
  assert [(a['echo'], a['batch']) for a in answers] == list(zip(['a', 'bb'], batches))


def test_hostile_requests_get_4xx_and_harm_nobody(server):
  proc, port = server
  for data, _ in HOSTILE:  # once first, so that what is measured next is growth, not start-up
    raw(port, data)
  before = rss_mb(proc.pid)
  slow = []
  senders = [threading.Thread(target=slow_sender, args=(port, slow, i % 2 == 0)) for i in range(5)]
  for t in senders:
    t.start()
  time.sleep(0.3)  # they have sent their headers and stalled
  status, answer, _ = call(port, 'POST', '/v1/predict', {'texts': ['x']})
  assert status == 200 and not slow  # answered while the slow senders still hold their connections
  for i in range(1000 - len(senders)):
    data, expected = HOSTILE[i % len(HOSTILE)]
    status = raw(port, data)
    assert status == expected, (status, expected, data[:100])
  for t in senders:
    t.join()
  assert slow == [408] * 5  # --timeout_s=2 for the whole body
  growth = rss_mb(proc.pid) - before
  assert growth < 50, f'RSS grew by {growth:.1f} MB'
  status, answer, _ = call(port, 'POST', '/v1/predict', {'texts': ['abc', 'abcd']})
  assert status == 200
  assert [(p['echo'], p['label']) for p in answer['predictions']] == [('abc', 'odd'), ('abcd', 'even')]


def test_idle_connections_past_the_limit_are_refused_and_leave_no_trace(servers):
  """uvicorn's limit_concurrency (4 x --max_queue = 64 here) counts the open connections when a request's
  headers arrive, and at 64 answers 503 and closes that one. Of 70 clients that send headers and stall,
  the server therefore holds at most 63 and closes the rest: idle clients cannot use up its file
  descriptors. Which of them it refuses depends on when it reads each socket, so only counts are checked."""
  proc, port = servers['limited']
  assert call(port, 'POST', '/v1/predict', {'texts': ['x']})[0] == 200  # the event loop's own sockets, made
  before = open_sockets(proc.pid)
  idle = [socket.create_connection(('127.0.0.1', port)) for _ in range(70)]
  answers = {}  # client index -> the first bytes the server sent (b'' if it closed without a word)
  try:
    for sock in idle:
      sock.sendall(b'POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"texts"')
      sock.setblocking(False)
    deadline = time.monotonic() + 30  # every refusal comes, however busy the machine
    while time.monotonic() < deadline and (len(answers) < 7 or open_sockets(proc.pid) > before + 63):
      for i, sock in enumerate(idle):
        if i not in answers:
          try:
            answers[i] = sock.recv(65536)
          except BlockingIOError:
            pass
          except ConnectionResetError:
            answers[i] = b''
      time.sleep(0.05)
    assert len(answers) >= 7, answers
    assert all(a.startswith(b'HTTP/1.1 503') or a == b'' for a in answers.values()), answers
    assert open_sockets(proc.pid) <= before + 63
  finally:
    for sock in idle:
      sock.close()
  deadline = time.monotonic() + 10  # the held connections close as the server reads their end
  while open_sockets(proc.pid) > before and time.monotonic() < deadline:
    time.sleep(0.05)
  assert open_sockets(proc.pid) <= before  # (before may still count the first request's connection)
  status, answer, _ = call(port, 'POST', '/v1/predict', {'texts': ['x']})
  assert status == 200 and answer['predictions'][0]['echo'] == 'x'


def open_sockets(pid) -> int:
  """Sockets the process holds open: its listening socket, connections, and what its event loop keeps."""
  count = 0
  for fd in os.listdir(f'/proc/{pid}/fd'):
    try:
      count += os.readlink(f'/proc/{pid}/fd/{fd}').startswith('socket:')
    except FileNotFoundError:  # closed while listed
      pass
  return count


def test_error_bodies_are_one_line_of_json(server):
  _, port = server
  for body, status, words in [(b'{"texts": [', 400, 'malformed JSON'), ({'texts': [1]}, 422, 'texts.0'),
                              ({'texts': ['a'] * 9}, 413, '--max_batch=8'), ({'prompt': 'a'}, 409, None)]:
    got, answer, _ = call(port, 'POST', '/v1/generate' if status == 409 else '/v1/predict', body)
    assert got == status and set(answer) == {'error'} and '\n' not in answer['error'], answer
    assert (words or "a 'classify' export: use POST /v1/predict") in answer['error']
  assert call(port, 'GET', '/nowhere')[1] == {'error': 'no such path: /nowhere'}


def test_page_posts_what_the_form_posts(server):
  _, port = server
  status, page, _ = call(port, 'GET', '/')
  assert status == 200 and '<textarea' in page and 'fetch(form.dataset.endpoint' in page
  form = re.search(r'data-endpoint="([^"]+)" data-field="([^"]+)" data-list="([^"]+)"', page)
  endpoint, field, is_list = form.groups()
  assert (endpoint, field, is_list) == ('/v1/predict', 'texts', 'true')
  status, answer, _ = call(port, 'POST', endpoint, {field: ['hello']})  # what the script sends
  assert status == 200 and answer['predictions'][0]['label'] == 'odd'
  assert set(answer['predictions'][0]['probabilities']) == {'even', 'odd'}  # what the page lists


def test_metrics_count_what_was_sent(server):
  _, port = server

  def counts():
    text = call(port, 'GET', '/metrics')[1]
    found = re.findall(r'bigjax_requests_total\{endpoint="([^"]+)",status="(\d+)"\} ([\d.]+)', text)
    return {(e, s): float(n) for e, s, n in found}, text
  before, _ = counts()
  for _ in range(3):
    call(port, 'POST', '/v1/predict', {'texts': ['a']})
  for _ in range(2):
    call(port, 'POST', '/v1/predict', {'texts': 'a'})
  call(port, 'GET', '/secret/path')
  after, text = counts()
  delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
  assert delta == {('/v1/predict', '200'): 3, ('/v1/predict', '422'): 2, ('unknown', '404'): 1,
                   ('/metrics', '200'): 1}
  for name in ('bigjax_request_seconds_bucket', 'bigjax_batch_size_bucket', 'bigjax_queue_depth'):
    assert name in text
  assert call(port, 'GET', '/healthz')[1]['status'] == 'ok'
  assert call(port, 'GET', '/v1/metadata')[1]['server']['max_batch'] == 8


def test_overload_is_503_with_retry_after_and_late_answers_504(slow_sampler):
  _, port = slow_sampler
  with ThreadPoolExecutor(12) as pool:
    answers = list(pool.map(lambda i: call(port, 'POST', '/v1/generate', {'prompt': f'p{i}'}), range(12)))
  statuses = sorted(status for status, _, _ in answers)
  assert set(statuses) == {200, 503, 504}, statuses  # 2 run, 4 queue and time out, 6 are refused
  assert all(r.getheader('Retry-After') == '1' for status, _, r in answers if status == 503)
  time.sleep(1.2)  # the batch that timed out finishes
  status, answer, _ = call(port, 'POST', '/v1/generate', {'text': 'hi', 'temperature': 0.5, 'top_k': 3,
                                                           'top_p': 0.9, 'seed': 5})
  assert status == 200
  assert json.loads(answer['output']) == {'prompt': 'hi', 'max_new_tokens': 16, 'temperature': 0.5,
                                          'top_k': 3, 'top_p': 0.9, 'seed': 5}
  assert call(port, 'POST', '/v1/predict', {'texts': ['a']})[1] == {
      'error': "this server runs a 'sample' export: use POST /v1/generate"}


def test_sigterm_finishes_requests_in_flight_then_exits_0(servers):
  proc, port = servers['draining']
  with ThreadPoolExecutor(12) as pool:
    futures = [pool.submit(call, port, 'POST', '/v1/predict', {'texts': [f'text {i}']}) for i in range(12)]
    deadline = time.time() + 10
    while call(port, 'GET', '/healthz')[1]['queued'] < 8 and time.time() < deadline:
      time.sleep(0.02)  # the first 4 run, the other 8 wait in the queue
    proc.send_signal(signal.SIGTERM)
    answers = [f.result() for f in futures]
  assert [(status, answer['predictions'][0]['echo']) for status, answer, _ in answers] == [
      (200, f'text {i}') for i in range(12)]
  assert proc.wait(timeout=30) == 0
  with pytest.raises(ConnectionRefusedError):
    socket.create_connection(('127.0.0.1', port), timeout=5)


@pytest.mark.parametrize('flags, words', [
    ([], 'give one of --export=DIR'),
    (['--export=/nonexistent/export'], 'holds no export'),
    (['--export=x', '--max_batch=0'], '--max_batch must be >= 1'),
])
def test_bad_flags_are_one_line_and_status_2(flags, words):
  result = subprocess.run([sys.executable, '-m', 'bigjax.serve', *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2, result.stderr
  assert result.stderr.count('\n') == 1 and words in result.stderr, result.stderr


@pytest.mark.slow  # trains digits_mlp, exports it, compiles it: a minute or more on 2 cores
def test_serves_a_trained_run_as_load_py_answers(main_job, tmp_path):
  """--workdir exports the run first; the answers are what load.py gives in process; the page asks for
  image files; SIGTERM exits 0."""
  import numpy as np
  from PIL import Image
  from sklearn.datasets import load_digits

  from bigjax.serving import load
  run = tmp_path / 'run'
  shutil.copytree(main_job, run)
  log = tmp_path / 'serve.log'
  with open(log, 'w') as out:
    proc = subprocess.Popen([sys.executable, '-m', 'bigjax.serve', f'--workdir={run}', '--port=0',
                             '--max_batch=4'], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
  port = wait_ready(proc, log, timeout=600)
  pngs = []
  for pixels in load_digits().images[:3]:
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255 / 16).astype(np.uint8)).save(buffer, format='PNG')
    pngs.append(buffer.getvalue())
  images = [base64.b64encode(p).decode() for p in pngs]
  status, answer, _ = call(port, 'POST', '/v1/predict', {'images': images})
  assert status == 200, answer
  exp = load.load(str(run / 'export'))
  exp.warm(4)
  assert answer['predictions'] == exp.run([exp.prepare({'image': p}) for p in pngs])
  assert 'data-field="images"' in call(port, 'GET', '/')[1]
  assert call(port, 'GET', '/v1/metadata')[1]['step'] == exp.metadata['step']
  assert stop(proc) == 0


if __name__ == '__main__':
  from bigjax.serving import server as _server
  _task, _delay, _settings = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
  _server.serve(FakeExport(_task, _delay), port=0, settings=_server.Settings(**_settings))
