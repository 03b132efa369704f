"""No network for the test suite: Python sockets may reach loopback and local (Unix) sockets only.

conftest.py installs it in the pytest process, and copies this file as `sitecustomize.py` onto
the PYTHONPATH of every subprocess the tests start (bigjax.main runs, simulated-device scripts,
the multi-host launcher's workers), which Python imports at start-up. A blocked call raises
NetworkBlocked, an OSError: code sees what it would see on a machine with no network, so a
suite that passes with the guard passes offline, whatever the machine it runs on can reach.

It guards Python's socket module (connect, connect_ex, sendto, name lookups), which every
Python HTTP client goes through. Native code that opens its own sockets (jax.distributed's
gRPC, between loopback ports in the tests) is not seen by it.
"""

import importlib.machinery
import importlib.util
import ipaddress
import os
import socket
import sys

_LOCAL_NAMES = {'localhost', 'localhost.localdomain', 'ip6-localhost', 'ip6-loopback'}


class NetworkBlocked(OSError):
  """A socket call that would leave the machine, made during the tests."""


def is_local(host) -> bool:
  """Whether `host` (a name or an address literal) is this machine: loopback, or unspecified
  (which connect() takes to mean this host)."""
  if host is None:
    return True
  if isinstance(host, bytes):
    host = host.decode('ascii', 'replace')
  host = host.split('%')[0]  # an IPv6 zone index
  if host == '' or host.lower() in _LOCAL_NAMES:
    return True
  try:
    address = ipaddress.ip_address(host)
  except ValueError:
    return False  # a name: resolving it may already be a network query
  mapped = getattr(address, 'ipv4_mapped', None)  # ::ffff:127.0.0.1
  address = mapped or address
  return address.is_loopback or address.is_unspecified


def _is_literal(host) -> bool:
  try:
    ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
    return True
  except (ValueError, AttributeError, UnicodeDecodeError):
    return False


def _check_address(family, address, call: str) -> None:
  if family not in (socket.AF_INET, socket.AF_INET6):
    return  # Unix paths, netlink and the like stay on this machine
  host = address[0] if isinstance(address, tuple) and address else address
  if not is_local(host):
    raise NetworkBlocked(f'{call}({address!r}) blocked: the tests may not use the network '
                         '(tests/network_guard.py); use loopback (127.0.0.1) or local data')


def _check_name(host, call: str) -> None:
  # An address literal resolves without any query; connect() checks where it points.
  if not is_local(host) and not _is_literal(host):
    raise NetworkBlocked(f'{call}({host!r}) blocked: the tests may not use the network '
                         '(tests/network_guard.py)')


_originals = {}


def install() -> None:
  """Guards the socket module in this process (again: a no-op)."""
  if _originals:
    return
  _originals.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                    sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo,
                    gethostbyname=socket.gethostbyname, gethostbyname_ex=socket.gethostbyname_ex)

  def connect(self, address):
    _check_address(self.family, address, 'connect')
    return _originals['connect'](self, address)

  def connect_ex(self, address):
    _check_address(self.family, address, 'connect_ex')
    return _originals['connect_ex'](self, address)

  def sendto(self, data, *flags_and_address):
    _check_address(self.family, flags_and_address[-1], 'sendto')
    return _originals['sendto'](self, data, *flags_and_address)

  def getaddrinfo(host, *args, **kwargs):
    _check_name(host, 'getaddrinfo')
    return _originals['getaddrinfo'](host, *args, **kwargs)

  def gethostbyname(host):
    _check_name(host, 'gethostbyname')
    return _originals['gethostbyname'](host)

  def gethostbyname_ex(host):
    _check_name(host, 'gethostbyname_ex')
    return _originals['gethostbyname_ex'](host)

  socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
  socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = (getaddrinfo, gethostbyname,
                                                                      gethostbyname_ex)


def uninstall() -> None:
  if not _originals:
    return
  for name in ('connect', 'connect_ex', 'sendto'):
    setattr(socket.socket, name, _originals[name])
  for name in ('getaddrinfo', 'gethostbyname', 'gethostbyname_ex'):
    setattr(socket, name, _originals[name])
  _originals.clear()


def _run_the_next_sitecustomize() -> None:
  """Python imports one sitecustomize: this copy stands in front of any the environment has,
  so it runs that one too."""
  here = os.path.dirname(os.path.abspath(__file__))
  rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
  spec = importlib.machinery.PathFinder.find_spec('sitecustomize', rest)
  if spec is not None and spec.loader is not None:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == 'sitecustomize':  # the copy conftest.py puts on a subprocess's PYTHONPATH
  install()
  _run_the_next_sitecustomize()
