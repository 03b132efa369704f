"""bigjax/data/debian.py on tiny fake apt lists (no network): parsing, the split-by-source rule, the
dedup rules, both builders read back through tfds.data_source, fetch_lists' error; and the two
baselines of benchmarks/seq2seq_baselines.py on tiny inputs."""

import os
import stat

import pytest
import tensorflow_datasets as tfds

from bigjax.config import ConfigError
from bigjax.data import debian
from helpers import REPO, load_script

# Sources: alpha (train: alpha-bin, libalpha1), lemon (test: lemon, lemon-doc), mango (test: mango-utils),
# omega (validation). By their own names libalpha1 would be test, lemon-doc and mango-utils train.
PACKAGES = """Package: alpha-bin
Source: alpha
Description-md5: a1

Package: libalpha1
Source: alpha (1.0-1)
Description-md5: a2

Package: lemon
Description-md5: l1

Package: lemon-doc
Source: lemon
Description-md5: l2

Package: mango-utils
Source: mango
Description-md5: m1

Package: omega
Description-md5: o1
"""
ALPHA = """Package: alpha-bin
Description-md5: a1
Description-en: alpha command line tool
 Alpha does many useful things
 with files and folders.
 .
 It is shared text.
"""
EN = ALPHA + """
Package: libalpha1
Description-md5: a2
Description-en: alpha shared library
 Library for alpha.
 .
 It is shared text.

Package: lemon
Description-md5: l1
Description-en: lemon squeezer
 Squeezes lemons quickly and well, with a simple hand crank.
 .
 Extra paragraph about lemons.

Package: lemon-doc
Description-md5: l2
Description-en: lemon documentation
 Documentation for lemon.
 .
 It is shared text.

Package: mango-utils
Description-md5: m1
Description-en: mango utilities
 Alpha does many useful things with files and folders.
 .
 It is shared text.

Package: omega
Description-md5: o1
Description-en: omega game
 A game about the last letter of the Greek alphabet, played on a board.
"""
DE = """Package: alpha-bin
Description-md5: a1
Description-de: Alpha-Befehlszeilenwerkzeug
 Alpha macht viele nützliche Dinge
 mit Dateien und Ordnern.
 .
 Es ist geteilter Text.

Package: libalpha1
Description-md5: a2
Description-de: gemeinsame Alpha-Bibliothek
 Bibliothek für Alpha.
 .
 Es ist geteilter Text.

Package: lemon
Description-md5: l1
Description-de: Zitronenpresse
 Presst Zitronen schnell und gut. Ein zusätzlicher Absatz.

Package: lemon-doc
Description-md5: l2
Description-de: Zitronen-Dokumentation
 Dokumentation für Zitrone.
 .
 Es ist geteilter Text.

Package: omega
Description-md5: o1
Description-de: Omega-Spiel
 Ein Brettspiel über den letzten Buchstaben des griechischen Alphabets.

Package: nowhere
Description-md5: x9
Description-de: keine englische Beschreibung
"""
SPLITS = ('train', 'validation', 'test')


@pytest.fixture(scope='module')
def lists(tmp_path_factory):
  path = tmp_path_factory.mktemp('lists')
  prefix, security = 'deb.debian.org_debian_dists_bookworm_main_', 'deb.debian.org_debian-security_dists_'
  for name, text in ((f'{prefix}i18n_Translation-en', EN), (f'{prefix}i18n_Translation-de', DE),
                     (f'{prefix}binary-amd64_Packages', PACKAGES),
                     # the same stanza again in a second archive: one entry per Description-md5
                     (f'{security}bookworm-security_main_i18n_Translation-en', ALPHA)):
    (path / name).write_text(text, encoding='utf-8')
  return str(path)


def _prepared(builder_class, lists, data_dir, name, **kwargs) -> dict:
  builder = builder_class(source_dir=lists, data_dir=data_dir, **kwargs)
  builder.download_and_prepare(file_format='array_record')
  out = {}
  for split in SPLITS:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    out[split] = [{k: v.decode() for k, v in source[i].items()} for i in range(len(source))]
  return out


def test_parsing(lists):
  english = debian.read_translations(lists, 'en')
  assert len(english) == 6
  assert english['a1'] == ('alpha-bin', 'alpha command line tool',
                           ['Alpha does many useful things with files and folders.', 'It is shared text.'])
  assert debian.read_translations(lists, 'de')['l1'][2] == [
      'Presst Zitronen schnell und gut. Ein zusätzlicher Absatz.']
  assert debian.source_packages(lists) == {'alpha-bin': 'alpha', 'libalpha1': 'alpha', 'lemon': 'lemon',
                                           'lemon-doc': 'lemon', 'mango-utils': 'mango', 'omega': 'omega'}


def test_translate(lists, tmp_path):
  rows = _prepared(debian.DebianTranslate, lists, str(tmp_path), 'debian_translate/en-de', config='en-de')
  pairs = {split: [(r['package'], r['source'], r['target']) for r in rows[split]] for split in SPLITS}
  assert pairs['train'] == [
      ('alpha-bin', 'alpha command line tool', 'Alpha-Befehlszeilenwerkzeug'),
      ('alpha-bin', 'Alpha does many useful things with files and folders.',
       'Alpha macht viele nützliche Dinge mit Dateien und Ordnern.'),
      ('alpha-bin', 'It is shared text.', 'Es ist geteilter Text.'),  # libalpha1's copy: dropped
      ('libalpha1', 'alpha shared library', 'gemeinsame Alpha-Bibliothek'),
      ('libalpha1', 'Library for alpha.', 'Bibliothek für Alpha.'),
  ]
  assert pairs['validation'] == [
      ('omega', 'omega game', 'Omega-Spiel'),
      ('omega', 'A game about the last letter of the Greek alphabet, played on a board.',
       'Ein Brettspiel über den letzten Buchstaben des griechischen Alphabets.'),
  ]
  assert pairs['test'] == [
      ('lemon', 'lemon squeezer', 'Zitronenpresse'),  # 2 English paragraphs, 1 German: synopsis only
      ('lemon-doc', 'lemon documentation', 'Zitronen-Dokumentation'),
      ('lemon-doc', 'Documentation for lemon.', 'Dokumentation für Zitrone.'),
      # 'It is shared text.' is a train source: not in test
  ]


def test_summarize(lists, tmp_path):
  rows = _prepared(debian.DebianSummarize, lists, str(tmp_path), 'debian_summarize')
  triples = {s: [(r['package'], r['description'], r['synopsis']) for r in rows[s]] for s in SPLITS}
  assert triples == {
      'train': [('alpha-bin', 'Alpha does many useful things with files and folders.\nIt is shared text.',
                 'alpha command line tool')],  # libalpha1, lemon-doc: under 10 words
      'validation': [('omega', 'A game about the last letter of the Greek alphabet, played on a board.',
                      'omega game')],
      # mango-utils has alpha-bin's description, a train text: not in test
      'test': [('lemon', 'Squeezes lemons quickly and well, with a simple hand crank.\n'
                'Extra paragraph about lemons.', 'lemon squeezer')],
  }


def test_split_of_is_by_source():
  assert [debian.split_of(s) for s in ('alpha', 'lemon', 'mango', 'omega')] == [
      'train', 'test', 'test', 'validation']
  counts = [debian.split_of(f'source{i}') for i in range(2000)]
  assert 0.85 < counts.count('train') / 2000 < 0.95 and counts.count('test') > 50


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize('apt_get', [None, '#!/bin/sh\necho "E: no network" >&2\nexit 100\n',
                                     '#!/bin/sh\nexit 0\n'])  # exits 0 but fetches nothing
def test_fetch_lists_failure_names_the_fix(tmp_path, monkeypatch, apt_get):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  if apt_get:
    _executable(bin_dir / 'apt-get', apt_get)
  monkeypatch.setenv('PATH', str(bin_dir))
  with pytest.raises(ConfigError, match=r'--config\.data\.source_dir=DIR') as error:
    debian.fetch_lists(str(tmp_path / 'dest'))
  assert '\n' not in str(error.value)
  assert os.path.exists(tmp_path / 'dest' / 'apt.conf')


def test_baselines():
  baselines = load_script(os.path.join(REPO, 'benchmarks', 'seq2seq_baselines.py'))
  assert baselines.retrieval(['the red house', 'a green tree', 'green tree house'], ['rot', 'grün', 'baum'],
                             ['a big green tree', 'red house']) == ['grün', 'rot']
  assert baselines.lead(['First of all this. Then more.', 'one two three\nfour five', 'short'], 2) == [
      'First of', 'one two', 'short']
