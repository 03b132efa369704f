"""`python_stdlib`: the text of the Python standard library as a TFDS dataset (ArrayRecord).

Every Python installation carries it, so it needs no network: the library's .py
sources (test packages excluded) and the reference documentation in
`pydoc_data.topics`. About 12 MB of text on CPython 3.11. One example is one
file (or one documentation topic), split by a hash of its path: about 90%
train, 5% validation, 5% test, so no file is in two splits. The text depends on
the installed Python's version, which the dataset records in its description.
"""

import hashlib
import os
import platform
import sysconfig

import tensorflow_datasets as tfds

_SKIP_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__'}


def _split_of(path: str) -> str:
  bucket = int(hashlib.md5(path.encode()).hexdigest(), 16) % 20
  return {0: 'test', 1: 'validation'}.get(bucket, 'train')


def _documents():
  """(path, text) for every source file and documentation topic, in a fixed order."""
  root = sysconfig.get_paths()['stdlib']
  for directory, subdirs, files in os.walk(root):  # sorted in place below: a fixed order
    subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS and not d.startswith('test'))
    for name in sorted(files):
      if name.endswith('.py') and not name.startswith('test_'):
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8', errors='replace') as f:
          yield os.path.relpath(path, root), f.read()
  from pydoc_data import topics  # noqa: PLC0415
  for key in sorted(topics.topics):
    yield f'pydoc_data/topics/{key}', topics.topics[key]


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'stdlib .py sources (no tests) and pydoc topics, split by path hash.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{__doc__}\nBuilt from Python {platform.python_version()}.',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text(), 'path': tfds.features.Text()}),
        disable_shuffling=True,  # records in path order: the same on every run
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in ('train', 'validation', 'test')}

  def _generate_examples(self, split):
    for path, text in _documents():
      if _split_of(path) == split and text.strip():
        yield path, {'text': text, 'path': path}
