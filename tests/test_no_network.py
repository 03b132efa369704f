"""The suite's network guard (conftest.py, network_guard.py): nothing but loopback, here and in
subprocesses, and loopback still works (multi-process runs meet over it)."""

import os
import socket
import subprocess
import sys

import pytest
from network_guard import NetworkBlocked

from helpers import REPO

PUBLIC = [(socket.AF_INET, ('8.8.8.8', 53)), (socket.AF_INET6, ('2001:4860:4860::8888', 53)),
          (socket.AF_INET, ('example.com', 80))]


@pytest.mark.parametrize('family, address', PUBLIC, ids=['ipv4', 'ipv6', 'name'])
def test_sockets_cannot_leave_the_machine(family, address):
  with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked, match='blocked'):
    s.connect(address)
  with socket.socket(family, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlocked):
    s.connect_ex(address)
  with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(NetworkBlocked):
    s.sendto(b'x', address)


def test_names_are_not_looked_up():
  """What HTTP clients call before they connect: a lookup may itself be a DNS query."""
  with pytest.raises(NetworkBlocked):
    socket.create_connection(('example.com', 443), timeout=1)
  with pytest.raises(NetworkBlocked):
    socket.getaddrinfo('example.com', 443)
  with pytest.raises(NetworkBlocked):
    socket.gethostbyname('example.com')


def _listener():
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.bind(('127.0.0.1', 0))
  server.listen()
  return server


@pytest.mark.parametrize('host', ['127.0.0.1', 'localhost'])
def test_loopback_and_local_sockets_still_work(host, tmp_path):
  with _listener() as server, socket.create_connection((host, server.getsockname()[1]), timeout=5) as c:
    peer, _ = server.accept()
    c.sendall(b'ping')
    assert peer.recv(4) == b'ping'
    peer.close()
  path = str(tmp_path / 'sock')
  with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
    server.bind(path)
    server.listen()
    client.connect(path)


PROBE = '''
import socket, sys
port = int(sys.argv[1])
socket.create_connection(('127.0.0.1', port), timeout=5).close()  # loopback: allowed
try:
  socket.create_connection(('8.8.8.8', 53), timeout=5)
  print('connected')
except OSError as e:
  print(type(e).__name__)
'''


def test_subprocesses_are_guarded_too():
  """Python subprocesses (bigjax.main, simulated-device scripts) import the guard at start-up."""
  with _listener() as server:
    result = subprocess.run([sys.executable, '-c', PROBE, str(server.getsockname()[1])], cwd=REPO,
                            capture_output=True, text=True, env=os.environ, timeout=60)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['NetworkBlocked']
