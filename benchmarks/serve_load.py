"""Throughput and latency of the HTTP server (python -m bigjax.serve) under bounded load, with dynamic
batching and without (issue #29).

  python benchmarks/serve_load.py --export=DIR [--rounds 3] [--concurrency 1,8,32] [--max_batch 32]
      [--requests 400] [--seconds 10] [--max_new_tokens 32]

Two servers run side by side on loopback ports, as subprocesses of this script: A with
--max_batch=N (batching) and B with --max_batch=1. Each round measures A then B at every concurrency
(interleaved, as docs/performance.md's protocol asks), after one untimed warm-up pass. A measurement is
closed-loop traffic: `concurrency` client threads, each with one keep-alive connection (the standard
library's http.client, which costs the client little of the two shared cores), send one request after
another until --requests answers have come back or --seconds have passed. A classifier gets one text per
request, a language model one prompt (--max_new_tokens each); the texts are snippets of the Python
standard library's own source, found on every machine.

Prints one JSON line per (max_batch, concurrency): the medians over rounds of throughput (requests/s),
p50 and p99 latency (ms), and the count of answers other than 200; then a final line with `ratio`, the
median of the rounds' throughput(A) / throughput(B) at the highest concurrency, `model_ratio`, the same
ratio for the export alone in this process once the servers have stopped (its milliseconds per input at
batch 1 and at --max_batch: what batching buys the model itself; the server gains a little more, as it
hands the model thread one batch instead of one request at a time), and the load average at the start
and the end.
"""

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--export', required=True, help='an export folder (python -m bigjax.export)')
  parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds; lines report medians')
  parser.add_argument('--concurrency', default='1,8,32', help='client threads, comma-separated')
  parser.add_argument('--max_batch', type=int, default=32, help='the batching server\'s --max_batch')
  parser.add_argument('--max_wait_ms', type=float, default=0.0, help='the batching server\'s --max_wait_ms')
  parser.add_argument('--requests', type=int, default=400, help='answers per measurement, at most')
  parser.add_argument('--seconds', type=float, default=10.0, help='seconds per measurement, at most')
  parser.add_argument('--max_new_tokens', type=int, default=32, help='a language model: tokens per answer')
  args = parser.parse_args(argv)
  args.concurrency = [int(c) for c in args.concurrency.split(',')]
  if min(args.rounds, args.max_batch, args.requests, *args.concurrency) < 1 or args.seconds <= 0:
    parser.error('--rounds, --max_batch, --requests and --concurrency must be >= 1, --seconds > 0')
  return args


def snippets(count=256, lines=12) -> list[str]:
  """Runs of lines of the standard library's source: what the offline text classifier was trained on."""
  texts = []
  for name in ('asyncio/tasks.py', 'email/message.py', 'http/client.py', 'unittest/case.py',
               'json/decoder.py'):
    with open(os.path.join(os.path.dirname(os.__file__), name)) as f:
      source = f.read().splitlines()
    texts += ['\n'.join(source[i:i + lines]) for i in range(0, len(source) - lines, lines)]
  return texts[::max(1, len(texts) // count)][:count]


class Server:
  """python -m bigjax.serve in a subprocess, on a free loopback port."""

  def __init__(self, export: str, max_batch: int, max_wait_ms: float):
    self.log = tempfile.NamedTemporaryFile('w+', prefix=f'serve_b{max_batch}_', suffix='.log')
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'bigjax.serve', f'--export={export}', '--port=0', f'--max_batch={max_batch}',
         f'--max_wait_ms={max_wait_ms}', f'--max_queue={max(256, 4 * max_batch)}'],
        cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (found := re.search(r'ready in .* at http://127\.0\.0\.1:(\d+)/', self._text())):
      if self.proc.poll() is not None or time.time() > deadline:
        self.proc.kill()
        sys.exit(f'the server did not start:\n{self._text()[-2000:]}')
      time.sleep(0.1)
    self.port = int(found.group(1))
    self.task = self.get('/v1/metadata')['task']

  def _text(self) -> str:
    with open(self.log.name) as f:
      return f.read()

  def get(self, path: str) -> dict:
    conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    conn.request('GET', path)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer

  def stop(self) -> int:
    self.proc.send_signal(signal.SIGTERM)
    status = self.proc.wait(timeout=120)
    self.log.close()
    return status


def items(task: str, texts: list[str], max_new_tokens: int) -> list[dict]:
  """One request's input each, as load.Export.prepare takes it."""
  if task == 'classify':
    return [{'text': t} for t in texts]
  if task == 'sample':
    return [{'prompt': t[:64], 'max_new_tokens': max_new_tokens, 'seed': i} for i, t in enumerate(texts)]
  if task == 'generate':
    return [{'text': t.splitlines()[0][:200]} for t in texts]
  sys.exit(f'a {task!r} export: this benchmark sends text only (classify, sample, generate)')


def bodies(task: str, inputs: list[dict]) -> tuple[str, list[bytes]]:
  if task == 'classify':
    return '/v1/predict', [json.dumps({'texts': [item['text']]}).encode() for item in inputs]
  return '/v1/generate', [json.dumps(item).encode() for item in inputs]


def model_alone(export: str, inputs: list[dict], max_batch: int, rounds: int) -> dict:
  """The export's own milliseconds per input in this process, without HTTP: one input per call, and
  max_batch per call, interleaved; medians of the rounds."""
  sys.path.insert(0, REPO)
  from bigjax.serving import load  # noqa: PLC0415 (jax, in this process only for this measurement)
  exp = load.load(export)
  prepared = [exp.prepare(item) for item in inputs]
  exp.warm(max_batch)
  times = {1: [], max_batch: []}
  for _ in range(rounds + 1):  # the first round untimed
    for batch, measured in times.items():
      start = time.perf_counter()
      for i in range(0, len(prepared), batch):
        exp.run(prepared[i:i + batch])
      measured.append(1000 * (time.perf_counter() - start) / len(prepared))
  ms = {batch: statistics.median(t[1:]) for batch, t in times.items()}
  return {'model_ms_per_input': {str(b): round(m, 3) for b, m in ms.items()},
          'model_ratio': round(ms[1] / ms[max_batch], 2)}


def measure(port: int, path: str, payloads: list[bytes], *, concurrency: int, requests: int,
            seconds: float) -> dict:
  """Closed-loop load: throughput, p50 and p99 latency, and answers other than 200."""
  latencies, errors, sent, lock = [], [0], [0], threading.Lock()
  start = time.perf_counter()
  stop_at = start + seconds

  def client() -> None:
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
    while time.perf_counter() < stop_at:
      with lock:
        i, sent[0] = sent[0], sent[0] + 1
      if i >= requests:
        break
      t0 = time.perf_counter()
      conn.request('POST', path, payloads[i % len(payloads)], {'Content-Type': 'application/json'})
      response = conn.getresponse()
      response.read()
      with lock:
        if response.status == 200:
          latencies.append(time.perf_counter() - t0)
        else:
          errors[0] += 1
    conn.close()
  threads = [threading.Thread(target=client) for _ in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.perf_counter() - start
  if not latencies:
    sys.exit(f'no request was answered with 200 ({errors[0]} other answers): see the server\'s log')
  latencies.sort()
  quantile = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]
  return {'throughput': len(latencies) / elapsed, 'p50_ms': quantile(0.5), 'p99_ms': quantile(0.99),
          'errors': errors[0], 'answers': len(latencies)}


def main(argv=None) -> None:
  args = parse_args(argv)
  load_start = os.getloadavg()[0]
  servers = {args.max_batch: Server(args.export, args.max_batch, args.max_wait_ms),
             1: Server(args.export, 1, 0)}
  inputs = items(servers[1].task, snippets(), args.max_new_tokens)
  path, payloads = bodies(servers[1].task, inputs)
  for server in servers.values():  # untimed: the first requests of a process are slower
    measure(server.port, path, payloads, concurrency=max(args.concurrency),
            requests=2 * max(args.concurrency), seconds=args.seconds)
  runs = {(b, c): [] for b in servers for c in args.concurrency}
  for r in range(args.rounds):
    for c in args.concurrency:
      for b, server in servers.items():
        runs[b, c].append(measure(server.port, path, payloads, concurrency=c, requests=args.requests,
                                  seconds=args.seconds))
        print(json.dumps({'round': r, 'max_batch': b, 'concurrency': c, **runs[b, c][-1]}), file=sys.stderr,
              flush=True)
  for (b, c), measured in runs.items():
    print(json.dumps({'export': args.export, 'task': servers[1].task, 'max_batch': b, 'concurrency': c,
                      'rounds': args.rounds, **{k: round(statistics.median(m[k] for m in measured), 2)
                                                for k in ('throughput', 'p50_ms', 'p99_ms')},
                      'errors': sum(m['errors'] for m in measured)}), flush=True)
  top = max(args.concurrency)
  ratios = [a['throughput'] / b['throughput'] for a, b in zip(runs[args.max_batch, top], runs[1, top])]
  statuses = [server.stop() for server in servers.values()]
  print('timing the export alone, without HTTP (compiling its buckets first)', file=sys.stderr, flush=True)
  alone = model_alone(args.export, inputs[:64], args.max_batch, args.rounds)
  print(json.dumps({'ratio': round(statistics.median(ratios), 2), 'ratios': [round(x, 2) for x in ratios],
                    'concurrency': top, 'max_batch': args.max_batch, **alone,
                    'load_start': load_start, 'load_end': os.getloadavg()[0], 'exit_statuses': statuses}),
        flush=True)


if __name__ == '__main__':
  main()
