#!/usr/bin/env bash
# The iotfleet demo on a fresh Debian 12 machine, as root:
#   1. installs what it needs (Debian packages, a virtualenv in .venv);
#   2. boots a local lab of real Debian hosts (systemd-nspawn) and emulated ESP8266 boards;
#   3. rolls the fleet out with the real pyinfra CLI: PKI, hardened TLS-only Mosquitto on every
#      broker, firewall, flashed gateways; then rolls out again to show that nothing changes;
#   4. proves it: a gateway boots from its flashed board, and the compliance suite checks each
#      broker from inside and attacks it from outside.
# Safe to run again. `.venv/bin/iotfleet lab down` removes the lab afterwards.
#   BROKERS=N GATEWAYS=M SUITE=trixie ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BROKERS=${BROKERS:-2}
GATEWAYS=${GATEWAYS:-2}
SUITE=${SUITE:-bookworm}
export IOTFLEET_LAB=${IOTFLEET_LAB:-lab}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing dependencies (Debian packages, .venv)"
./scripts/bootstrap.sh

step "Booting the lab: $BROKERS broker host(s), $GATEWAYS emulated ESP8266 board(s), $SUITE"
.venv/bin/iotfleet lab up --brokers "$BROKERS" --gateways "$GATEWAYS" --suite "$SUITE"
.venv/bin/iotfleet lab status

step "Rollout: pyinfra inventory/lab.py deploy.py"
.venv/bin/pyinfra -y inventory/lab.py deploy.py

step "Second rollout: nothing should change"
.venv/bin/pyinfra -y inventory/lab.py deploy.py 2>&1 | tail -n 6

if [ "$GATEWAYS" -gt 0 ]; then
  step "Gateway gw1 boots from what was flashed: mTLS to the broker, telemetry"
  .venv/bin/iotfleet gateway run gw1 -i inventory/lab.py --interval 0.5 --count 3
fi

step "PKI status"
.venv/bin/iotfleet pki status --inventory inventory/lab.py || true

step "Compliance: iotfleet check inventory/lab.py (inside each broker, and attacks from outside)"
.venv/bin/iotfleet check inventory/lab.py

cat <<EOF

Done. What to look at:
  .venv/bin/iotfleet lab status                    the lab's hosts and boards
  .venv/bin/iotfleet pki status --inventory inventory/lab.py
                                                   the fleet's CA, CRL and identities
  inventory/lab.py, inventory/group_data/lab.py    the fleet as code (devices, clients, listeners)
  ssh into a broker:  ssh -i \$HOME/.local/share/iotfleet/labs/$IOTFLEET_LAB/ssh/id_ed25519 root@broker1.$IOTFLEET_LAB.iotfleet.test
      cat /etc/mosquitto/mosquitto.conf; systemd-analyze security mosquitto; nft list ruleset
  reports/report.html, reports/junit.xml           the compliance report
  .venv/bin/iotfleet gateway run gw1 -i inventory/lab.py
                                                   a gateway booted from its flashed board (Ctrl-C)
  .venv/bin/iotfleet lab down                      removes the lab
EOF
