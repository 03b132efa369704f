"""A workdir in a Cloud Storage bucket (gs://), as on a TPU pod slice, with no network.

The bucket is tests/fake_gcs.py: epath reaches it through fsspec (as it reaches GCS through gcsfs
on a TPU VM), and Orbax's TensorStore through Cloud Storage's JSON API on a loopback port. While a
run trains into it, any open() or os call on a gs:// path fails the test: every file must go
through epath, or it would land in a local folder named 'gs:'.
"""

import builtins
import json
import os
import re
import struct
import types

import fake_gcs
import jax
import numpy as np
import pytest
from orbax.checkpoint._src.path import gcs_utils

from bigjax import files, train
from bigjax.config import base_config
from helpers import RATES, final_state, overridden, read_metrics

BUCKET = 'gs://bigjax-test'


@pytest.fixture(scope='module')
def bucket():
  """gs://bigjax-test, empty at the start of each test that uses it."""
  server = fake_gcs.serve()
  fake_gcs.install()
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('TENSORSTORE_GCS_HTTP_URL', f'http://127.0.0.1:{server.server_port}')
    patch.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'none')  # TensorStore then asks for no credentials
    # Orbax asks google-cloud-storage whether the bucket has a hierarchical namespace (a TPU VM
    # installs it from requirements-tpu.txt); this one has none.
    no_hns = types.SimpleNamespace(hierarchical_namespace_enabled=False)
    patch.setattr(gcs_utils, 'get_bucket', lambda name: no_hns)
    yield BUCKET
  server.shutdown()


@pytest.fixture
def empty_bucket(bucket):
  fake_gcs.OBJECTS.clear()
  return bucket


def _raise_on_bucket_paths(function):
  def guarded(path, *args, **kwargs):
    if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(os.fspath(path)).startswith('gs:'):
      raise AssertionError(f'{function.__name__}({path!r}) bypasses epath')
    return function(path, *args, **kwargs)
  return guarded


@pytest.fixture
def no_local_calls_on_bucket_paths(monkeypatch, tmp_path):
  """open() and os's file calls raise for a gs:// path (os.path's go through os.stat)."""
  monkeypatch.chdir(tmp_path)  # where a bypassing call that slipped through would leave 'gs:/...'
  monkeypatch.setattr(builtins, 'open', _raise_on_bucket_paths(builtins.open))
  for name in ('open', 'stat', 'lstat', 'listdir', 'scandir', 'mkdir', 'makedirs', 'remove', 'unlink',
               'rename', 'replace', 'rmdir'):
    monkeypatch.setattr(os, name, _raise_on_bucket_paths(getattr(os, name)))
  yield
  assert not os.path.exists(tmp_path / 'gs:')


def _objects(prefix: str) -> dict[str, bytes]:
  start = prefix.removeprefix('gs://') + '/'
  return {name[len(start):]: data for name, data in fake_gcs.OBJECTS.items() if name.startswith(start)}


def test_replaced_atomically_is_one_upload_and_a_failed_write_leaves_the_old_object(empty_bucket):
  path = f'{empty_bucket}/a/config.json'
  files.write_text(path, 'old\n')
  with pytest.raises(KeyboardInterrupt), files.replaced_atomically(path) as f:
    f.write('half of the new')
    raise KeyboardInterrupt
  assert _objects(f'{empty_bucket}/a') == {'config.json': b'old\n'}  # and no temporary object
  with files.replaced_atomically(path, 'wb') as f:
    f.write(b'new')
  assert _objects(f'{empty_bucket}/a') == {'config.json': b'new'}


def test_a_line_log_in_a_bucket_is_rewritten_whole_at_each_write(empty_bucket):
  path = f'{empty_bucket}/a/metrics.jsonl'
  files.write_text(path, '{"step": 1}\n')
  log = files.LineLog(path)
  log.write('{"step": 2}\n')
  assert fake_gcs.OBJECTS['bigjax-test/a/metrics.jsonl'] == b'{"step": 1}\n{"step": 2}\n'
  log.close()


def _config(data_dir):
  c = overridden(base_config(), train__steps=40, train__batch_size=64, train__eval_every=20,
                 train__log_every=10, checkpoint__every=20, checkpoint__keep=10)
  c.data.data_dir = data_dir
  c.model.update({'depth': 1, 'width': 32})
  return c


def _untimed(records):
  return [{k: v for k, v in r.items() if k not in RATES} for r in records]


def _remote_metrics(workdir):
  return [json.loads(line) for line in _objects(workdir)['metrics.jsonl'].decode().splitlines()]


def _event_tags(content: bytes) -> set:
  """The summary tags in one TensorBoard event file (TFRecord framing: length, CRC, data, CRC)."""
  from tensorboardX.proto.event_pb2 import Event
  tags, offset = set(), 0
  while offset < len(content):
    (length,) = struct.unpack('<Q', content[offset:offset + 8])
    tags.update(v.tag for v in Event.FromString(content[offset + 12:offset + 12 + length]).summary.value)
    offset += 16 + length
  return tags


def _layout(names) -> set:
  """The run's files, with the names that differ between equal runs collapsed: event files (time,
  host) and TensorStore's data files (content hashes, under d/)."""
  return {'events' if n.startswith('events.') else re.sub(r'/d/[0-9a-f]+$', '/d/*', n) for n in names}


def test_a_run_in_a_bucket_trains_resumes_and_writes_what_a_local_run_writes(
    empty_bucket, data_dir, tmp_path, caplog, no_local_calls_on_bucket_paths):
  config = _config(data_dir)
  local, remote = str(tmp_path / 'local'), f'{empty_bucket}/runs/digits'
  train.train_and_evaluate(config, local)
  train.train_and_evaluate(config, remote)

  written = _objects(remote)
  local_names = [os.path.relpath(os.path.join(root, n), local)
                 for root, _, names in os.walk(local) for n in names]
  assert _layout(written) == _layout(local_names)
  assert {'config.json', 'metrics.jsonl', 'events', 'checkpoints/40/state/manifest.ocdbt'} <= _layout(written)
  assert written['config.json'].decode() == open(os.path.join(local, 'config.json')).read()
  assert _untimed(_remote_metrics(remote)) == _untimed(read_metrics(local))
  [events] = [data for name, data in written.items() if name.startswith('events.out.tfevents.')]
  assert {'train/loss', 'eval/accuracy', 'test/accuracy'} <= _event_tags(events)

  # Resume: as if the run had died before its step-40 checkpoint.
  for name in list(fake_gcs.OBJECTS):
    if name.startswith(remote.removeprefix('gs://') + '/checkpoints/40'):
      del fake_gcs.OBJECTS[name]
  caplog.set_level('INFO')
  caplog.clear()
  train.train_and_evaluate(config, remote)
  assert f'Resumed from step 20 in {remote}' in caplog.text
  assert _untimed(_remote_metrics(remote)) == _untimed(read_metrics(local))
  for x, y in zip(jax.tree.leaves(final_state(config, local)), jax.tree.leaves(final_state(config, remote)),
                  strict=True):
    np.testing.assert_array_equal(x, y)


def test_tokenizers_and_token_caches_in_a_bucket(empty_bucket, no_local_calls_on_bucket_paths):
  from bigjax import data
  from bigjax.data import tokenizers
  texts = lambda: ['the cat sat on the mat', 'the dog sat']
  trained = tokenizers.get_or_train('word', 8, f'{empty_bucket}/data/bigjax_cache/x', texts)
  again = tokenizers.get_or_train('word', 8, f'{empty_bucket}/data/bigjax_cache/x', lambda: [])  # read back
  assert again.words == trained.words and 'bigjax-test/data/bigjax_cache/x/word_8.json' in fake_gcs.OBJECTS
  tokenizers.save(trained, f'{empty_bucket}/run/tokenizer')
  assert tokenizers.load(f'{empty_bucket}/run/tokenizer').words == trained.words
  path = f'{empty_bucket}/data/bigjax_cache/x/ids.npz'
  made = data._cached(path, lambda: {'tokens': np.arange(5)})
  np.testing.assert_array_equal(data._cached(path, lambda: {})['tokens'], made['tokens'])
