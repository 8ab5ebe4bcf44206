#!/usr/bin/env bash
# The iotfleet demo on a fresh Debian 12 machine, as root:
#   1. installs what it needs (Debian packages, a virtualenv in .venv);
#   2. boots a local lab of real Debian hosts (systemd-nspawn) and emulated ESP8266 boards;
#   3. rolls the fleet out with the real pyinfra CLI: PKI, hardened TLS-only Mosquitto on every
#      broker, firewall, flashed gateways; then rolls out again to show that nothing changes;
#   4. proves it from outside: the compliance suite, or real MQTT clients when it is absent.
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

if .venv/bin/python -c 'import iotfleet.cli.check' 2>/dev/null; then
  step "Compliance: iotfleet check inventory/lab.py"
  .venv/bin/iotfleet check inventory/lab.py
else
  step "Proof with Debian's mosquitto_pub/mosquitto_sub"
  # Credentials stay with iotfleet's state (0700), never in /tmp.
  state=${IOTFLEET_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/iotfleet}
  mkdir -p -m 0700 "$state"
  creds=$(mktemp -d -p "$state" demo-creds.XXXXXX)
  trap 'rm -rf "$creds"' EXIT
  .venv/bin/iotfleet pki export sensor-1 --out "$creds" --inventory inventory/lab.py
  broker=$(.venv/bin/python -c 'from iotfleet.lab.inventory import lab_inventory_groups as g; print(g()["brokers"][0][0])')
  tls=(-h "$broker" -p 8883 --cafile "$creds/ca.pem")
  mosquitto_pub "${tls[@]}" --cert "$creds/sensor-1.crt" --key "$creds/sensor-1.key" \
    -q 1 -t devices/sensor-1/telemetry/temp -m 21.5 \
    && echo "sensor-1 with its certificate: published to devices/sensor-1/telemetry/temp"
  if mosquitto_pub "${tls[@]}" -q 1 -t devices/sensor-1/telemetry/temp -m x 2>/dev/null; then
    echo "UNEXPECTED: a client without a certificate was accepted" >&2; exit 1
  fi
  echo "a client without a certificate: refused"
  if mosquitto_pub -h "$broker" -p 1883 -t x -m x 2>/dev/null; then
    echo "UNEXPECTED: plain MQTT on 1883 answered" >&2; exit 1
  fi
  echo "plain MQTT on port 1883: refused"
fi

cat <<EOF

Done. What to look at:
  .venv/bin/iotfleet lab status                    the lab's hosts and boards
  .venv/bin/iotfleet pki status --inventory inventory/lab.py
                                                   the fleet's CA, CRL and identities
  inventory/lab.py, inventory/group_data/lab.py    the fleet as code (devices, clients, listeners)
  ssh into a broker:  ssh -i \$HOME/.local/share/iotfleet/labs/$IOTFLEET_LAB/ssh/id_ed25519 root@broker1.$IOTFLEET_LAB.iotfleet.test
      cat /etc/mosquitto/mosquitto.conf; systemd-analyze security mosquitto; nft list ruleset
  reports/ (when the compliance suite ran)         JUnit XML and HTML report
  .venv/bin/iotfleet lab down                      removes the lab
EOF
