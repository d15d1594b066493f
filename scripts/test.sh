#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Serially, in one process: the CI-sized VM has 2 cores, and the suite's fault and cluster tests
# start real Ray clusters whose start-up limits (Ray's raylet waits 30 s) are not safe with a
# second worker competing for the same cores. For a faster local run on a bigger machine, pass
# `-n 2 --dist loadscope` (pytest-xdist is installed by the set-up).
exec .venv/bin/python -m pytest "$@"
