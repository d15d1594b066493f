#!/usr/bin/env bash
# Set up (idempotent), then run the demo: `qfleet train configs/cartpole.yaml` on the embedded
# default (a redis-server child, local Ray, a replay shard, the learner and two env actors on this
# machine). About two minutes on 2 cores; the run directory (printed at the end) holds the
# learning curve, metrics, checkpoints and summary. Extra arguments go to `qfleet train`, e.g.
# `bash scripts/demo.sh --set train.total_env_steps=20000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qfleet train configs/cartpole.yaml "$@"
