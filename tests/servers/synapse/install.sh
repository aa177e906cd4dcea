#!/usr/bin/env bash
# Create (or reuse) a Python venv with Synapse from PyPI for the Matrix tests; prints its path.
# Idempotent and safe to run concurrently (flock): when the venv already holds this version it
# does nothing. Synapse ships manylinux wheels, so nothing is compiled (~25 s, ~240 MB).
# Env: SYNAPSE_VENV (default ${XDG_CACHE_HOME:-$HOME/.cache}/tribridge-test/venv-synapse),
#      SYNAPSE_PIP_SPEC (default matrix-synapse==1.163.2), PYTHON (default python3, >= 3.9).
set -euo pipefail
VENV=${SYNAPSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tribridge-test/venv-synapse}
SPEC=${SYNAPSE_PIP_SPEC:-matrix-synapse==1.163.2}
MARK="$VENV/.installed-spec"

installed() { [ -x "$VENV/bin/python" ] && [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$SPEC" ]; }
if installed; then echo "$VENV"; exit 0; fi

mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null; then exec 9>"$VENV.lock"; flock 9; fi
if installed; then echo "$VENV"; exit 0; fi

[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$SPEC" >&2
"$VENV/bin/python" -c 'import synapse, synapse.app.homeserver' >&2
echo "$SPEC" > "$MARK"
echo "installed $SPEC into $VENV" >&2
echo "$VENV"
