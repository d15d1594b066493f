#!/usr/bin/env bash
# Set up (idempotent), then run the demo: for now the replay benchmark (one shard on loopback vs raw
# gRPC and an in-process table). `qfleet train configs/cartpole.yaml` replaces it once it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# A short run by default (about a minute); pass your own options for the full benchmark,
# e.g. `bash scripts/demo.sh --seconds 3 --repeats 3`.
[ $# -eq 0 ] && set -- --seconds 2 --repeats 1
exec .venv/bin/qfleet bench replay "$@"
