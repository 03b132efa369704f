"""`python_stdlib_snippets`: which standard-library package a Python function comes from.

Real text on every machine, so it needs no network. An example is one function or
method of the installed Python's standard library, its source dedented, labelled
by its top-level package (asyncio, email, http, unittest, xml, ...): 10 classes,
about 6,600 examples on CPython 3.11.

Splits are by file, not by snippet, so that neighbouring functions of one file
(which share names and idioms) never straddle two splits: within each package the
files are dealt out, largest first, to whichever split is furthest below its
share of the package's snippets (test 15%, validation 10%, train 75%). A
validation or test snippet whose whitespace-normalized text also occurs in train
(`__repr__` boilerplate, say) is dropped.
"""

import ast
import hashlib
import os
import platform
import sysconfig
import textwrap

import tensorflow_datasets as tfds

# The packages with over 200 functions in 5 or more files, in every CPython from 3.11 on (distutils
# and lib2to3 are gone from 3.12 and 3.13). Smaller ones (json: 31 functions, 5 in test) would
# leave a class a handful of test examples, and its F1, which weighs 1/10 of macro F1, noise.
PACKAGES = ('asyncio', 'email', 'http', 'idlelib', 'importlib', 'multiprocessing', 'tkinter', 'unittest',
            'urllib', 'xml')
SHARES = (('test', 0.15), ('validation', 0.10))  # the rest is train
_SKIP_DIRS = {'test', 'tests', 'idle_test', '__pycache__'}


def _functions(path: str) -> list[str]:
  """The dedented source of every function and method in the file, in source order."""
  with open(path, encoding='utf-8', errors='replace') as f:
    source = f.read()
  try:
    tree = ast.parse(source)
  except SyntaxError:  # lib2to3's fixtures hold Python 2 on purpose
    return []
  nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  nodes.sort(key=lambda n: n.lineno)
  # The def's lines, the last one cut where the def ends (a trailing comment is not the function's).
  # ast.get_source_segment would do this, but splits the whole file anew for every node: minutes.
  lines = source.splitlines(keepends=True)

  def segment(node) -> str:
    body = lines[node.lineno - 1:node.end_lineno]
    body[-1] = body[-1].encode()[:node.end_col_offset].decode()  # the offset counts UTF-8 bytes
    return textwrap.dedent(''.join(body))
  return [segment(n) for n in nodes]


def _package_files(root: str, package: str) -> list[str]:
  paths = []
  for directory, subdirs, files in os.walk(os.path.join(root, package)):
    subdirs[:] = [d for d in subdirs if d not in _SKIP_DIRS and not d.startswith('test')]
    paths += [os.path.join(directory, f) for f in files if f.endswith('.py') and not f.startswith('test')]
  return sorted(paths)


def _hash(text: str) -> str:
  return hashlib.md5(text.encode()).hexdigest()


def split_files(root: str) -> dict:
  """split -> [(package, relative path, [snippets])]: each package's files dealt out by SHARES.

  Largest file first, each to the split furthest below its share of the package's snippets
  (ties by a hash of the path): shares come out close to SHARES however uneven the files.
  """
  shares = {'train': 1 - sum(share for _, share in SHARES), **dict(SHARES)}
  splits = {split: [] for split in shares}
  for package in PACKAGES:
    files = [(os.path.relpath(p, root), _functions(p)) for p in _package_files(root, package)]
    if not files:
      raise FileNotFoundError(f'the standard library in {root} has no {package!r} package (some Linux '
                              f'distributions ship idlelib and tkinter apart): install it')
    files = sorted((f for f in files if f[1]), key=lambda f: (-len(f[1]), _hash(f[0])))
    total = sum(len(snippets) for _, snippets in files)
    taken = dict.fromkeys(shares, 0)
    for path, snippets in files:
      split = max(shares, key=lambda s: shares[s] * total - taken[s])
      splits[split].append((package, path, snippets))
      taken[split] += len(snippets)
  return splits


def _normalized(text: str) -> str:
  return ' '.join(text.split())


class PythonStdlibSnippets(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'functions of 10 stdlib packages; split by file; train duplicates removed.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{__doc__}\nBuilt from Python {platform.python_version()}.',
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=PACKAGES),
            'path': tfds.features.Text(),
        }),
        supervised_keys=('text', 'label'),
        disable_shuffling=True,  # records in file order: the same on every run
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    files = split_files(sysconfig.get_paths()['stdlib'])
    seen = {_normalized(s) for _, _, snippets in files['train'] for s in snippets}
    return {split: self._generate_examples(files[split], None if split == 'train' else seen)
            for split in files}

  def _generate_examples(self, files, train_snippets):
    for package, path, snippets in files:
      for i, text in enumerate(snippets):
        if train_snippets is None or _normalized(text) not in train_snippets:
          yield f'{path}:{i}', {'text': text, 'label': package, 'path': path}
