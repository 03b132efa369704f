"""`debian_translate` (en-de, en-fr) and `debian_summarize`: Debian package descriptions as TFDS datasets.

Debian translates its package descriptions (the one-line synopsis and the long description)
into many languages, keyed by the md5 of the English description. apt fetches these
Translation-* files, with the Packages files that name each package's source package, into
a private folder (`fetch_lists`, no system state touched), or `source_dir` names a folder that
already holds them (a copy of /var/lib/apt/lists from a machine whose apt fetched them).

- `debian_translate/en-de`, `/en-fr`: English -> German / French. One example per synopsis
  pair, plus one per paragraph pair when both versions have the same number of paragraphs.
- `debian_summarize`: the English long description -> its synopsis.

Split by a hash of the source package: about 90% train, 5% validation, 5% test, so all binary
packages of one source share a split. Identical pairs are kept once per split, and
validation/test drop every example whose input text also appears in train (descriptions
share boilerplate paragraphs across sources). Small and of one narrow domain (software
package descriptions, tens of thousands of short texts): it shows that a model learns, offline,
and is no substitute for the real benchmarks (WMT for translation, CNN/DailyMail for summaries).
"""

import gzip
import hashlib
import os
import shutil
import subprocess

import tensorflow_datasets as tfds
from absl import logging

from bigjax import files
from bigjax.config import ConfigError

_SPLITS = ('train', 'validation', 'test')
_LANGS = ('en', 'de', 'fr')
_MIN_DESCRIPTION_WORDS = 10
_APT_CONF = """Dir::Etc::Parts "{dir}/empty";  // empty: the system's apt.conf.d may set Languages "none"
Dir::State::Lists "{dir}/lists";
Dir::Cache "{dir}/cache";
Acquire::Languages {{"en"; "de"; "fr";}};
Acquire::GzipIndexes "false";  // store the indexes uncompressed, as this module reads them
"""
_FIX = ('pass --config.data.source_dir=DIR, a folder holding Translation-en/-de/-fr and Packages files '
        '(e.g. a copy of /var/lib/apt/lists from a machine where apt fetched them with '
        'Acquire::Languages {"en"; "de"; "fr";})')


def _files(lists_dir: str, suffix: str) -> list[str]:
  """Files named `*<suffix>` (apt's name for the index, maybe compressed), in a fixed order."""
  names = sorted(os.listdir(lists_dir))
  return [os.path.join(lists_dir, n) for n in names
          if n.removesuffix('.gz').removesuffix('.lz4').endswith(suffix)]


def _lines(path: str):
  if path.endswith('.lz4'):  # docker images keep apt's indexes lz4-compressed; Python has no lz4
    text = subprocess.run(['lz4', '-dc', path], capture_output=True, check=True).stdout.decode()
    yield from text.splitlines()
    return
  with (gzip.open if path.endswith('.gz') else open)(path, 'rt', encoding='utf-8') as f:
    for line in f:
      yield line.rstrip('\n')


def fetch_lists(dest: str) -> str:
  """Has apt fetch the en/de/fr Translation and Packages files into dest/lists; returns that folder."""
  lists = os.path.join(dest, 'lists')
  if os.path.isdir(lists) and all(_files(lists, f'_i18n_Translation-{lang}') for lang in _LANGS):
    return lists
  for sub in ('lists/partial', 'cache', 'empty'):
    os.makedirs(os.path.join(dest, sub), exist_ok=True)
  conf = os.path.join(dest, 'apt.conf')
  with open(conf, 'w') as f:
    f.write(_APT_CONF.format(dir=os.path.abspath(dest)))
  logging.info('fetching Debian package descriptions (en, de, fr) with apt-get update into %s', lists)
  error = None
  if shutil.which('apt-get') is None:
    error = 'no apt-get on this machine'
  else:
    # NoLocking: the private lists folder needs no lock, and taking the system's would need root.
    result = subprocess.run(['apt-get', 'update', '-o', 'Debug::NoLocking=1'], capture_output=True, text=True,
                            env={**os.environ, 'APT_CONFIG': conf})
    missing = [lang for lang in _LANGS if not _files(lists, f'_i18n_Translation-{lang}')]
    # apt-get update exits 0 on most failed downloads, so the files themselves are the test.
    if result.returncode or missing:
      last = (result.stderr.strip().splitlines() or ['no Translation-' + '/'.join(missing)])[-1]
      error = f'apt-get update failed ({last})'
  if error:
    raise ConfigError(f'cannot fetch the Debian package descriptions into {lists}: {error}; {_FIX}')
  return lists


def _stanzas(path: str):
  """{field: value} per stanza; a field's continuation lines are kept, one per list item."""
  stanza, field = {}, None
  for line in _lines(path):
    if not line.strip():
      if stanza:
        yield stanza
      stanza, field = {}, None
    elif line[0] in ' \t' and field:
      stanza[field].append(line)
    else:
      field, _, value = line.partition(':')
      stanza[field] = [value.strip()]
  if stanza:
    yield stanza


def read_translations(lists_dir: str, lang: str) -> dict:
  """{description md5: (package, synopsis, [paragraphs])} from every Translation-<lang> file."""
  out = {}
  for path in _files(lists_dir, f'_i18n_Translation-{lang}'):
    for stanza in _stanzas(path):
      key = next((k for k in stanza if k.startswith('Description-') and k != 'Description-md5'), None)
      md5 = stanza.get('Description-md5', [''])[0]
      if key is None or not md5 or md5 in out:  # the first file (sorted by name) wins
        continue
      paragraphs, lines = [], []
      for line in stanza[key][1:] + [' .']:
        if line.strip() == '.':  # ' .' separates paragraphs
          paragraphs += [' '.join(lines)] if lines else []
          lines = []
        elif line.strip():
          lines.append(line.strip())  # unwrapped: one paragraph is one line
      out[md5] = (stanza['Package'][0], stanza[key][0], paragraphs)
  return out


def source_packages(lists_dir: str) -> dict:
  """{binary package: source package} from every Packages file; no Source: field means the same name."""
  out = {}
  for path in _files(lists_dir, '_Packages'):
    package = None
    for line in _lines(path):  # two fields of a 50 MB file: a plain scan, not _stanzas
      if line.startswith('Package:'):
        package = line.split(':', 1)[1].strip()
        out.setdefault(package, package)
      elif line.startswith('Source:') and package:
        out[package] = line.split(':', 1)[1].split('(')[0].strip()  # 'name (version)' -> 'name'
  return out


def split_of(source: str) -> str:
  bucket = int(hashlib.md5(source.encode()).hexdigest(), 16) % 20
  return {0: 'test', 1: 'validation'}.get(bucket, 'train')


def _by_split(lists_dir: str, pairs_of) -> dict:
  """{split: [(input, output, package)]}: pairs_of(md5, english) per English description, sorted by
  package; duplicates kept once per split, and validation/test lose the inputs that train has."""
  english = read_translations(lists_dir, 'en')
  sources = source_packages(lists_dir)
  raw = {split: [] for split in _SPLITS}
  for md5, entry in sorted(english.items(), key=lambda item: (item[1][0], item[0])):
    package = entry[0]
    examples = [(s, t, package) for s, t in pairs_of(md5, entry) if s and t]  # no empty texts
    raw[split_of(sources.get(package, package))] += examples
  train_inputs = {s for s, _, _ in raw['train']}
  out = {}
  for split, examples in raw.items():
    seen = set()
    out[split] = []
    for s, t, package in examples:
      if (s, t) not in seen and (split == 'train' or s not in train_inputs):
        seen.add((s, t))
        out[split].append((s, t, package))
  return out


class _DebianBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared: the lists folder to read (source_dir, or apt's fetch into the download dir)."""

  def __init__(self, *, source_dir: str | None = None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _lists_dir(self, dl_manager) -> str:
    """apt writes only to a local folder: with the data dir in a bucket, the lists go to the cache."""
    download_dir = str(dl_manager.download_dir)
    local = files.cache_dir() if files.is_remote(download_dir) else download_dir
    return self._source_dir or fetch_lists(os.path.join(local, 'debian_lists'))

  def _split_generators(self, dl_manager):
    lists_dir = self._lists_dir(dl_manager)
    examples = _by_split(lists_dir, self._pairs_of(lists_dir))
    return {split: self._generate_examples(examples[split]) for split in _SPLITS}

  def _generate_examples(self, examples):
    for index, (source, target, package) in enumerate(examples):
      yield index, dict(zip(self._FIELDS, (source, target, package)))


class DebianTranslate(_DebianBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Debian bookworm description translations: synopsis and aligned paragraph pairs.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f'en-{lang}', description=f'English -> {lang}')
                     for lang in ('de', 'fr')]
  _FIELDS = ('source', 'target', 'package')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({name: tfds.features.Text() for name in self._FIELDS}),
        supervised_keys=('source', 'target'),
        disable_shuffling=True,  # records in package order: the same on every run
    )

  def _pairs_of(self, lists_dir):
    translated = read_translations(lists_dir, self.builder_config.name.split('-')[1])

    def pairs(md5, english):
      other = translated.get(md5)
      if other is None:
        return []
      _, synopsis, paragraphs = english
      aligned = len(paragraphs) == len(other[2])  # otherwise no way to tell which paragraph is which
      return [(synopsis, other[1])] + (list(zip(paragraphs, other[2])) if aligned else [])
    return pairs


class DebianSummarize(_DebianBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Debian bookworm English descriptions (>= 10 words) with their synopses.'}
  _FIELDS = ('description', 'synopsis', 'package')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({name: tfds.features.Text() for name in self._FIELDS}),
        supervised_keys=('description', 'synopsis'),
        disable_shuffling=True,  # records in package order: the same on every run
    )

  def _pairs_of(self, lists_dir):
    del lists_dir  # the English descriptions alone

    def pairs(md5, english):
      del md5
      _, synopsis, paragraphs = english
      description = '\n'.join(paragraphs)
      return [(description, synopsis)] if len(description.split()) >= _MIN_DESCRIPTION_WORDS else []
    return pairs
