#!/usr/bin/env bash
# Runs `python -m bigjax.main ARGS...` on every worker of a Cloud TPU VM (a single host or a
# pod slice): creates the VM (or a queued resource) unless it exists, copies this checkout,
# installs requirements.txt and requirements-tpu.txt on every worker, runs the job on
# --worker=all with the logs streaming here, then deletes the VM if asked.
#
#   launch/tpu_vm.sh --name=my-tpu --zone=us-central2-b --accelerator=v4-32 [--project=P] \
#       [--runtime=tpu-ubuntu2204-base] [--queued] [--spot] [--delete] [--shared_workdir] [--print] \
#       -- --config=experiments/cifar10_resnet.py --workdir=gs://my-bucket/runs/cifar
#
# Every option can come from the environment instead: TPU_NAME, ZONE, ACCELERATOR, PROJECT,
# RUNTIME. --print echoes the gcloud commands without running any. A slice of several hosts
# (more than 8 chips or cores in its name: v4-16, v5p-16, v5litepod-16, v6e-16 and up) needs a
# --workdir that every worker sees, since Orbax writes one checkpoint from all of them: a gs://
# bucket, or, with --shared_workdir, a path on a mount they all share (Filestore, gcsfuse).
set -euo pipefail

name=${TPU_NAME:-} zone=${ZONE:-} accelerator=${ACCELERATOR:-} project=${PROJECT:-}
runtime=${RUNTIME:-tpu-ubuntu2204-base}
queued=0 spot=0 delete=0 print=0 shared_workdir=0
usage() { echo "usage: $0 --name=N --zone=Z --accelerator=T [--project=P] [--runtime=R] [--queued] [--spot] [--delete] [--shared_workdir] [--print] -- BIGJAX_ARGS..." >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator=*) accelerator=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --runtime=*) runtime=${1#*=} ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --delete) delete=1 ;;
    --shared_workdir) shared_workdir=1 ;;
    --print) print=1 ;;
    --) shift; break ;;
    *) echo "tpu_vm: unknown option $1" >&2; usage ;;
  esac
  shift
done
[[ -n $name && -n $zone && -n $accelerator && $# -gt 0 ]] || usage

# Several hosts write one workdir: refuse one that only this host's disk would hold.
workdir=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --workdir=*) workdir=${args[i]#*=} ;;
    --workdir) workdir=${args[i + 1]:-} ;;
  esac
done
size=${accelerator##*-}
if [[ $size =~ ^[0-9]+$ ]] && ((size > 8)) && [[ $workdir != gs://* && $shared_workdir == 0 ]]; then
  echo "tpu_vm: error: $accelerator has several hosts, which must share the workdir:" \
       "pass --workdir=gs://BUCKET/PATH, or --shared_workdir if ${workdir:-the default runs/ folder} is on a mount every worker shares" >&2
  exit 2
fi

where=(--zone="$zone")
[[ -n $project ]] && where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
spot_flag=()
[[ $spot == 1 ]] && spot_flag=(--spot)

quote() {  # shell-quote one word, readably: as-is when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./=:@,+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {  # echo a command (copy-pasteable), then run it unless --print
  local line="+" word
  for word in "$@"; do line+=" $(quote "$word")"; done
  echo "$line"
  [[ $print == 1 ]] || "$@"
}

# 1. Create, or reuse the VM of this name.
if [[ $print == 0 ]] && "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_vm: reusing $name"
elif [[ $queued == 1 ]]; then
  run "${qr[@]}" create "$name" --node-id="$name" --accelerator-type="$accelerator" \
      --runtime-version="$runtime" "${spot_flag[@]}" "${where[@]}"
  echo "tpu_vm: waiting for queued resource $name to become ACTIVE"
  while [[ $print == 0 ]] && [[ $("${qr[@]}" describe "$name" "${where[@]}" --format='value(state.state)') != ACTIVE ]]; do
    sleep 30
  done
else
  run "${tpu[@]}" create "$name" --accelerator-type="$accelerator" --version="$runtime" \
      "${spot_flag[@]}" "${where[@]}"
fi

# 2. Copy this checkout (without runs/ or .git) to every worker, and install.
archive=/tmp/bigjax-$name.tar.gz
run tar -czf "$archive" --exclude=./runs --exclude=./.git -C "$(dirname "$0")/.." .
run "${tpu[@]}" scp "$archive" "$name:bigjax.tar.gz" --worker=all "${where[@]}"
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="mkdir -p ~/bigjax && \
tar -xzf ~/bigjax.tar.gz -C ~/bigjax && cd ~/bigjax && pip install -q -r requirements.txt \
-r requirements-tpu.txt"

# 3. Run on every worker; jax.distributed finds its peers from the TPU metadata.
status=0
run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="cd ~/bigjax && python -m bigjax.main --distributed $(for a in "$@"; do printf '%s ' "$(quote "$a")"; done)" || status=$?

# 4. Delete on request (also after a failure: an idle TPU still costs money).
if [[ $delete == 1 ]]; then
  if [[ $queued == 1 ]]; then
    run "${qr[@]}" delete "$name" --force --quiet "${where[@]}"
  else
    run "${tpu[@]}" delete "$name" --quiet "${where[@]}"
  fi
else
  echo "tpu_vm: keeping $name (delete it with: ${tpu[*]} delete $name ${where[*]} --quiet)"
fi
exit "$status"
