#!/usr/bin/env bash
# Install what the tests and the demo need on a Debian machine: InspIRCd (the real IRC server the
# tests run on loopback) and Atheme (its services, for the SASL and NickServ tests). Idempotent:
# does nothing when everything is present.
set -euo pipefail
need=()
command -v inspircd >/dev/null 2>&1 || [ -x /usr/sbin/inspircd ] || need+=(inspircd)
command -v atheme-services >/dev/null 2>&1 || [ -x /usr/bin/atheme-services ] || need+=(atheme-services)
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
fi
