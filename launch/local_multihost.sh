#!/usr/bin/env bash
# Runs N processes of `python -m bigjax.main ARGS...` on this machine, as N hosts would:
# each process gets LOCAL_DEVICES simulated CPU devices (default 4) and they meet through a
# coordinator on a free loopback port. If any process fails, the rest are stopped and this
# script exits with that process's status, naming it; it never waits on a dead peer.
#
#   launch/local_multihost.sh 2 --config=experiments/digits_mlp.py --workdir=runs/mh
set -uo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N ARGS...   (N processes of python -m bigjax.main ARGS...)" >&2
  exit 2
fi
n=$1
shift
devices=${LOCAL_DEVICES:-4}
python=${PYTHON:-python}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

declare -A process_of  # pid -> process id
for ((i = 0; i < n; i++)); do
  env -u XLA_FLAGS JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices" \
    "$python" -m bigjax.main "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$n" --process_id="$i" &
  process_of[$!]=$i
done

stop_all() {
  for pid in "${!process_of[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 2
  for pid in "${!process_of[@]}"; do kill -KILL "$pid" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

for ((left = n; left > 0; left--)); do
  wait -n -p pid
  status=$?
  i=${process_of[$pid]}
  unset "process_of[$pid]"
  if [[ $status -ne 0 ]]; then
    echo "local_multihost: process $i (pid $pid) exited with status $status; stopping the others" >&2
    stop_all
    exit "$status"
  fi
done
echo "local_multihost: all $n processes finished" >&2
