#!/usr/bin/env bash
# Install what the tests and the demo need on a Debian machine: InspIRCd (the real IRC server the
# tests run on loopback), ngIRCd (a server without history, for the IRC history tests), Atheme
# (its services, for the SASL and NickServ tests), PostgreSQL (the PostgreSQL store's tests: each
# test binary runs its own server on a free loopback port), Synapse (the Matrix homeserver, from
# PyPI into a venv under ~/.cache), Node.js, and the export test's readers (slack-export-viewer
# from PyPI into a venv under ~/.cache, Debian's chromium). Idempotent: does nothing when
# everything is present.
set -euo pipefail
need=()
command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || need+=(inspircd)
command -v ngircd >/dev/null 2>&1 || [ -x /usr/sbin/ngircd ] || need+=(ngircd)
command -v atheme-services >/dev/null 2>&1 || [ -x /usr/bin/atheme-services ] || need+=(atheme-services)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  # The packages may start system daemons (InspIRCd on port 6667); tests never use them.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet inspircd 2>/dev/null; then
    $SUDO systemctl disable --now inspircd >/dev/null 2>&1 || true
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ngircd 2>/dev/null; then
    $SUDO systemctl disable --now ngircd >/dev/null 2>&1 || true
  fi
  # The package may start a cluster of its own on 5432; the tests start theirs.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet postgresql 2>/dev/null; then
    $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi
# Synapse (the Matrix homeserver of the Matrix tests), from PyPI into a venv under ~/.cache.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi
"$(dirname "$0")/../tests/servers/synapse/install.sh" >/dev/null
# Node.js >= 20 and npm: the emulator's fidelity test drives it with the official
# @mattermost/client (installed by `npm ci` from the npm registry on first run). Debian's own
# nodejs package is used only when there is no node at all; the test says so if it is too old.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
# The export tests' independent readers (tests/it/history_archive.rs): slack-export-viewer
# (PyPI) reads the Slack export ZIP, in its own venv (3.5.0: the last release for Python < 3.12);
# Debian's chromium renders the HTML export headless.
SLACK_VENV=${SLACK_EXPORT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tribridge-test/venv-slack-export}
SLACK_SPEC=slack-export-viewer==3.5.0
if ! [ -x "$SLACK_VENV/bin/python" ] || ! [ "$(cat "$SLACK_VENV/.installed-spec" 2>/dev/null)" = "$SLACK_SPEC" ]; then
  mkdir -p "$(dirname "$SLACK_VENV")"
  [ -x "$SLACK_VENV/bin/python" ] || python3 -m venv "$SLACK_VENV"
  "$SLACK_VENV/bin/pip" install --quiet --disable-pip-version-check "$SLACK_SPEC" >&2
  "$SLACK_VENV/bin/python" -c 'import slackviewer.reader' >&2
  echo "$SLACK_SPEC" > "$SLACK_VENV/.installed-spec"
fi
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
