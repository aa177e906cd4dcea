#!/usr/bin/env bash
# A local demo: installs InspIRCd and Synapse, starts them and a Mattermost emulator on loopback, runs
# tribridge on a demo config that links #demo-a, #demo-b, the Mattermost channel demo-c and the Matrix
# room #demo-d:localhost, and shows them mirroring.
#   scripts/demo.sh                 scripted conversation, then exit
#   scripts/demo.sh --interactive   keep running; connect your own IRC client to the printed port
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec cargo run --quiet --release --example demo -- "$@"
