#!/usr/bin/env bash
# Install what the tests and the demo need on a Debian machine: InspIRCd (the real IRC server the
# tests run on loopback), ngIRCd (a server without history, for the IRC history tests), Atheme
# (its services, for the SASL and NickServ tests), PostgreSQL (the PostgreSQL store's tests: each
# test binary runs its own server on a free loopback port) and Synapse (the
# Matrix homeserver, from PyPI into a venv under ~/.cache). Idempotent: does nothing when
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
