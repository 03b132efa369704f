"""Packaging: `pip install .` takes compatible ranges of what bigjax runs on (no test or lint
tools), and requirements.txt pins one tested version inside each range."""

import os
import tomllib

from packaging.requirements import Requirement

from helpers import REPO


def _pins() -> dict:
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    lines = [line.split('#')[0].strip() for line in f]
  return {Requirement(line).name.lower(): Requirement(line) for line in lines if line}


def _project() -> dict:
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def test_pip_install_takes_ranges_and_no_test_tools():
  runtime = [Requirement(r) for r in _project()['dependencies']]
  names = {r.name.lower() for r in runtime}
  assert not names & {'pytest', 'ruff', 'httpx'}
  assert all(r.specifier and not any(s.operator == '==' for s in r.specifier) for r in runtime), runtime


def test_every_range_holds_its_pinned_version():
  pins = _pins()
  for requirement in [Requirement(r) for r in _project()['dependencies']]:
    pin = pins.get(requirement.name.lower())
    assert pin is not None, f'{requirement.name} is not pinned in requirements.txt'
    (version,) = [s.version for s in pin.specifier]
    assert requirement.specifier.contains(version), (requirement, version)
  extras = [Requirement(r) for r in _project()['optional-dependencies']['test']]
  assert {r.name for r in extras} == {'pytest', 'ruff', 'httpx'}
  assert all(r.specifier.contains(next(iter(pins[r.name].specifier)).version) for r in extras)
