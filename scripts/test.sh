#!/usr/bin/env bash
# Set up (idempotent), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (pytest-xdist), each test module on one of them (--dist loadscope): a module's
# fixtures (a Ray instance, a cluster) start once, and the suite's waits on Ray, Redis and
# subprocess start-up overlap. Later arguments win: `-n 0` runs it serially, in one process.
exec .venv/bin/python -m pytest -n 2 --dist loadscope "$@"
