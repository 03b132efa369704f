"""python -m bigjax.export and bigjax/serving/load.py: three model families exported from tiny trained
runs, loaded in a process that cannot import bigjax's model code, and compared with the checkpoint's own
outputs; the export's refusals; batches whose rows do not depend on each other."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from bigjax import decode, export, train
from bigjax.config import ConfigError
from bigjax.serving import load
from helpers import REPO, final_state, load_script, tiny_lm_config


def _cnn(data_dir):
  c = load_script(os.path.join(REPO, 'experiments', 'digits_cnn.py')).get_config()
  c.data.data_dir = data_dir
  c.train.update({'steps': 2, 'eval_every': 2})
  c.checkpoint.every = 2
  return c


def _lstm(data_dir):
  c = load_script(os.path.join(REPO, 'experiments', 'imdb_lstm.py')).get_config('offline')
  c.data.update({'data_dir': data_dir, 'seq_len': 48, 'vocab_size': 500})
  c.model.update({'embed_dim': 16, 'hidden': 16})
  c.train.update({'steps': 2, 'batch_size': 64, 'eval_every': 2, 'cpu_matmul': 'xla'})  # 64: fewer eval calls
  c.checkpoint.every = 2
  return c


def _lm(data_dir):
  c = tiny_lm_config(data_dir, steps=2, eval_every=2, batch_size=64)  # 64: fewer eval calls
  c.checkpoint.every = 2
  return c


@pytest.fixture(scope='module')
def runs(data_dir, tmp_path_factory):
  """name -> (config, workdir, export folder): three families, trained a few steps and exported."""
  out = {}
  for name, make in (('cnn', _cnn), ('lstm', _lstm), ('lm', _lm)):
    config, workdir = make(data_dir), str(tmp_path_factory.mktemp(name))
    train.train_and_evaluate(config, workdir)
    out[name] = (config, workdir, export.export(workdir, max_new_tokens=8))
  return out


def _classifier_inputs(config, workdir):
  s = train.setup(config, workdir)
  return np.asarray(export.check_inputs(s, config, 'classify')[0])


def _expected(name, config, workdir):
  """(inputs, outputs) by bigjax's own code: the restored checkpoint's model (with its CPU kernels),
  and for the LM the greedy sampling of --mode=sample."""
  state = final_state(config, workdir)
  s = train.setup(config, workdir)
  if name == 'lm':
    prompts = [[5 + i, 40 + i, 77] for i in range(3)] + [[9] * 5]
    ids = decode.sample(s.model, state.params, prompts, 0, max_new_tokens=8, rng=jax.random.key(0),
                        temperature=0.0)
    return prompts, ids
  inputs = _classifier_inputs(config, workdir)
  logits = s.model.apply({'params': state.params, **state.model_state}, inputs, train=False)
  return inputs, np.asarray(jax.nn.softmax(logits, axis=-1))


# In a fresh process where bigjax's model code, flax and optax cannot be imported.
_FRESH = '''
import json, sys
import numpy as np
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('flax', 'optax', 'orbax', 'qwix') or name.startswith(
        ('bigjax.models', 'bigjax.tasks', 'bigjax.train', 'bigjax.export', 'bigjax.decode')):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from bigjax.serving import load
cases = json.load(open(sys.argv[1]))
results = {}
for name, (path, inputs) in cases.items():
  model = load.load(path)
  if model.task == 'sample':  # greedy, prompts left-padded as --mode=sample pads them
    width = max(len(p) for p in inputs)
    tokens = np.array([[0] * (width - len(p)) + p for p in inputs], np.int32)
    rows = len(inputs)
    out = model.call(tokens, tokens != 0, np.zeros(rows, np.float32), np.zeros(rows, np.int32),
                     np.ones(rows, np.float32), np.zeros(rows, np.uint32))
  else:
    out = model.call(np.asarray(inputs, model.metadata['inputs'][0]['dtype']))
  results[name] = np.asarray(out).tolist()
print(json.dumps(results))
print('imported:', sorted(m for m in sys.modules if m.startswith(('bigjax', 'flax'))), file=sys.stderr)
'''


def test_exports_load_without_model_code_and_equal_the_checkpoint(runs, tmp_path):
  cases, expected = {}, {}
  for name, (config, workdir, path) in runs.items():
    inputs, outputs = _expected(name, config, workdir)
    cases[name] = (path, inputs if name == 'lm' else inputs.tolist())
    expected[name] = outputs
  (tmp_path / 'cases.json').write_text(json.dumps(cases))
  result = subprocess.run([sys.executable, '-c', _FRESH, str(tmp_path / 'cases.json')], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'bigjax.models' not in result.stderr and "'flax" not in result.stderr
  got = json.loads(result.stdout.splitlines()[-1])
  for name in ('cnn', 'lstm'):  # the LSTM's export runs XLA's scan; the checkpoint's model, C++
    np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=0, err_msg=name)
    assert np.allclose(np.sum(got[name], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(got['lm'], expected['lm'])
  meta = json.loads(open(os.path.join(runs['lm'][2], 'metadata.json')).read())
  assert meta['task'] == 'sample' and meta['step'] == 2 and meta['check']['max_abs_diff'] == 0.0
  assert meta['inputs'][0] == {'name': 'tokens', 'shape': ['b', 't'], 'dtype': 'int32'}


def test_a_served_batch_gives_each_row_what_it_gives_alone(runs):
  """Dynamic batching is only safe if rows never see each other: greedy and seeded rows, with
  different options and prompt lengths, padded into one bucket."""
  model = load.load(runs['lm'][2])  # not warmed: run compiles only the buckets these use
  requests = [{'prompt': 'def f():', 'temperature': 0.0}, {'prompt': 'x', 'seed': 7, 'top_k': 5},
              {'prompt': 'import os\n', 'seed': 7, 'top_p': 0.5, 'max_new_tokens': 3}]
  together = model.run([model.prepare(r) for r in requests])
  alone = [model.run([model.prepare(r)])[0] for r in requests]
  assert together == alone
  assert len(together[2]['output']) <= 3  # 3 bytes (the tiny LM's tokens) make at most 3 characters
  other_seed = model.run([model.prepare({**requests[1], 'seed': 8})])[0]
  assert model.run([model.prepare(requests[1])])[0] == alone[1] and 'output' in other_seed

  classifier = load.load(runs['lstm'][2])
  texts = ['def main(): pass', 'import asyncio', 'class A: pass']
  batched = classifier.run([classifier.prepare({'text': t}) for t in texts])
  assert batched == [classifier.run([classifier.prepare({'text': t})])[0] for t in texts]
  assert set(batched[0]['probabilities']) == set(classifier.metadata['labels'])


def test_a_long_text_runs_apart_from_a_batch_of_short_ones(runs):
  """One text of the longest length bucket would pad 16 short ones to its length: it runs in a call of
  its own, and every row still gets what it gets alone, in the order sent. Two texts stay one call."""
  classifier = load.load(runs['lstm'][2])  # lengths 32 and 48 (data.bucket 32, seq_len 48)
  long = ' '.join(f'x{i} = {i}' for i in range(40))  # truncated to 48 tokens
  texts = [f'import m{i}' for i in range(8)] + [long] + [f'def f{i}(): pass' for i in range(8)]
  prepared = [classifier.prepare({'text': t}) for t in texts]
  assert [p.length for p in prepared] == [32] * 8 + [48] + [32] * 8
  assert classifier._groups(prepared, 32) == [[*range(8), *range(9, 17)], [8]]
  assert classifier._groups(prepared[7:9], 2) == [[0, 1]]  # 2 x 48 costs less than two calls
  batched = classifier.run(prepared)
  assert sorted(classifier._compiled) == [(1, 48), (16, 32)]
  assert batched == [classifier.run([p])[0] for p in prepared]


def test_bad_requests_are_one_line_errors(runs):
  lm, cnn = load.load(runs['lm'][2]), load.load(runs['cnn'][2])
  limit = lm.metadata['sample']['max_prompt_tokens']
  with pytest.raises(load.TooLarge, match=f'at most {limit}'):
    lm.prepare({'prompt': 'x' * (limit + 1)})
  with pytest.raises(load.TooLarge, match='max_new_tokens=9'):
    lm.prepare({'prompt': 'x', 'max_new_tokens': 9})
  huge = io.BytesIO()
  Image.new('L', (5000, 5000)).save(huge, 'PNG')  # 25 MB of pixels in a few KB
  with pytest.raises(load.TooLarge, match='5000x5000'):
    cnn.prepare({'image': huge.getvalue()})
  with pytest.raises(load.BadInput, match='not a readable image'):
    cnn.prepare({'image': b'GIF89a not really'})
  with pytest.raises(load.BadInput, match='classifies images'):
    cnn.prepare({'text': 'seven'})


def test_an_export_that_differs_from_its_checkpoint_is_refused(runs, monkeypatch, tmp_path):
  _, workdir, _ = runs['cnn']
  monkeypatch.setattr(export, 'TOLERANCE', -1.0)  # any difference, even none, is too much
  with pytest.raises(ConfigError, match='export refused'):
    export.export(workdir, str(tmp_path / 'refused'))
  assert not os.listdir(tmp_path)  # nothing written, not even the staging folder
  with pytest.raises(ConfigError, match="leaves out this machine's cpu"):  # where it could not be checked
    export.export(workdir, str(tmp_path / 'tpu'), platforms=('tpu',))


def test_a_run_without_checkpoints_is_one_line_and_exit_2(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'bigjax.export', f'--workdir={tmp_path}'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'no checkpoints' in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().count('\n') == 0 and not os.listdir(tmp_path)


@pytest.mark.slow  # quantizing times five eval passes of each model
def test_a_quantized_folder_exports_its_integer_weights(runs, tmp_path):
  from bigjax import quant_eval  # noqa: PLC0415
  _, workdir, float_export = runs['cnn']
  quant_eval.export(workdir, 'int4_weights', 0)
  path = export.export(os.path.join(workdir, 'quantized', 'int4_weights'), str(tmp_path / 'int4'))
  model, reference = load.load(path), load.load(float_export)
  assert model.metadata['quantized'] == 'int4_weights' and 'int4' in model.metadata['params']['dtypes']
  assert any(p.dtype == 'int4' for p in model.params)
  inputs = np.zeros((2, *model.metadata['inputs'][0]['shape'][1:]), np.float32)
  inputs[1] = 1.0
  assert 0 < np.abs(np.asarray(model.call(inputs)) - np.asarray(reference.call(inputs))).max() < 0.1


@pytest.mark.slow  # lowering for two more platforms
def test_an_export_lowered_for_gpus_and_tpus_still_runs_here(runs, tmp_path):
  path = export.export(runs['cnn'][1], str(tmp_path / 'multi'), platforms=('cpu', 'cuda', 'tpu'))
  model = load.load(path)
  assert model.metadata['platforms'] == ['cpu', 'cuda', 'tpu'] == list(model.exported.platforms)
  inputs = np.zeros((3, *model.metadata['inputs'][0]['shape'][1:]), np.float32)
  np.testing.assert_allclose(model.call(inputs), load.load(runs['cnn'][2]).call(inputs), atol=1e-6)
