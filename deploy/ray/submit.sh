#!/usr/bin/env bash
# Submits a qfleet run to a Ray cluster's job API (deploy/ray/cluster.yaml: after
# `ray dashboard deploy/ray/cluster.yaml`, the API is on http://localhost:8265).
#
#   bash deploy/ray/submit.sh CONFIG RUN_NAME [--set section.key=value ...]
#
# The driver runs on the head, reaches the cluster with ray.address=auto and the head's Redis
# (port 6390, its password from the head's environment) by the head's own address, and writes
# runs/RUN_NAME on the head. The learner, shards and actors ask for the node slots cluster.yaml's
# node types offer (`learner`, `replay`, `actors`: README's "Deploy on a Ray cluster").
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG RUN_NAME [--set section.key=value ...]" >&2
  exit 2
fi
config=$1 run=$2
shift 2
address=${RAY_JOB_ADDRESS:-http://localhost:8265}
# The job API asks for the cluster's Ray token: from the environment, or deploy/secrets/.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  secret="$(dirname "$0")/../secrets/RAY_AUTH_TOKEN"
  if [ ! -r "$secret" ]; then
    echo "$0: set RAY_AUTH_TOKEN or run python deploy/make_secrets.py first" >&2
    exit 2
  fi
  RAY_AUTH_TOKEN=$(cat "$secret")
  export RAY_AUTH_TOKEN
fi
extra=""   # the --set arguments, quoted for the remote shell (none: nothing, not '')
if [ $# -gt 0 ]; then extra=$(printf ' %q' "$@"); fi
exec ray job submit --address="$address" --submission-id="qfleet-$run" -- bash -c "
  cd /opt/qfleet &&
  head_ip=\$(python -c 'import ray.util; print(ray.util.get_node_ip_address())') &&
  exec qfleet train $(printf %q "$config") --run-dir runs/$(printf %q "$run") \
    --set ray.address=auto --set redis.url=redis://\$head_ip:6390/0 \
    --set train.num_shards=2 --set 'train.shard_resources={replay: 1}' \
    --set 'train.learner_resources={learner: 1}' --set 'actors.resources={actors: 1}' \
    --set actors.num_cpus=0.1 --set train.learner_num_cpus=0.5 $extra"
