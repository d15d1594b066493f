#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages (redis-server, prometheus, docker-compose,
# chromium, chromium-driver, util-linux or setpriv) when absent,
# a .venv virtualenv in the checkout with torch (CPU wheel first), the pinned requirements and
# qfleet itself (editable). Re-running does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# docker-compose: only `docker-compose config -q` in the tests (deploy files); no Docker engine needed.
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# MiniWoB browser envs (actors/browser.py): headless Chromium and the matching ChromeDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# setpriv and prlimit: children that die with their parent (redis-server, browsers, bench runs), set
# without Python between fork and exec; a test's file-size limit.
# On Debian <= 11 setpriv is a package of its own (`setpriv`); from 12 on it is in util-linux.
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
need_setpriv=0
command -v setpriv >/dev/null 2>&1 || need_setpriv=1
if [ ${#need_apt[@]} -gt 0 ] || [ "$need_setpriv" = 1 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  if [ "$need_setpriv" = 1 ]; then  # after the update: a fresh machine's package lists are empty
    if apt-cache show setpriv >/dev/null 2>&1; then need_apt+=(setpriv); else need_apt+=(util-linux); fi
  fi
  log "installing ${need_apt[*]} with apt"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start system-wide services; qfleet starts its own on loopback ports.
  for svc in redis-server prometheus; do
    (command -v systemctl >/dev/null && $SUDO systemctl disable --now "$svc" >/dev/null 2>&1) || true
  done
fi
if ! command -v setpriv >/dev/null 2>&1; then
  log "warning: setpriv is still missing: children fall back to a preexec_fn, and Chromium starts without a parent-death signal"
elif ! setpriv --pdeathsig TERM -- true >/dev/null 2>&1; then
  log "warning: this setpriv has no --pdeathsig (util-linux < 2.33): children fall back to a preexec_fn, and Chromium starts without a parent-death signal"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Stamp: skip pip entirely when nothing that decides the install changed.
stamp=.venv/.qfleet-installed
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import replay, torch" 2>/dev/null; then
  log "environment up to date"
  exit 0
fi

# torch first: the pinned CPU wheel, so nothing later pulls the CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  log "installing torch==2.13.0 (CPU)"
  "${PIP[@]}" install torch==2.13.0
fi
log "installing pinned requirements"
"${PIP[@]}" install -r requirements.txt
"${PIP[@]}" install --no-deps -r requirements-nodeps.txt
log "installing qfleet (editable)"
"${PIP[@]}" install --no-deps -e .
echo "$want" > "$stamp"
log "done: $(.venv/bin/qfleet --help >/dev/null && echo 'qfleet is on .venv/bin')"
