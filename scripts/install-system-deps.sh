#!/usr/bin/env bash
# Installs the Debian packages iotfleet needs on the control machine (Debian 12, as root).
# Idempotent. Mosquitto is installed for its binaries only: a policy-rc.d guard keeps the
# package from starting a broker on the control machine.
set -euo pipefail

packages=(
  debootstrap systemd-container iproute2 nftables   # the lab: real Debian hosts
  apt-utils                                          # apt-ftparchive: the lab's own package source
  openssh-client openssl ca-certificates             # ssh to lab hosts, openssl verify in tests
  mosquitto mosquitto-clients                        # real broker and clients for tests
  chromium chromium-driver                          # the report page, seen in a real browser by tests
  prometheus-node-exporter                           # serves the --prometheus textfile in tests (never started as a service)
  prometheus                                         # promtool: checks and tests the alert rules in files/prometheus/
  gcc libmosquitto-dev mosquitto-dev libssl-dev      # build iotfleet's Mosquitto plugin
  faketime                                           # tests: rollouts and brokers under a clock that runs ahead
  shellcheck                                         # tests: the rendered apply script is checked
  python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "iotfleet: installing ${missing[*]} needs root (run as root or with sudo)" >&2
  exit 1
fi

guard=/usr/sbin/policy-rc.d
made_guard=0
if [ ! -e "$guard" ]; then
  printf '#!/bin/sh\n# iotfleet: do not start services while installing\nexit 101\n' >"$guard"
  chmod 0755 "$guard"
  made_guard=1
fi
trap '[ "$made_guard" -eq 1 ] && rm -f "$guard"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The tests run node_exporter and promtool as plain programs: a Prometheus server or exporter
# that this script brought in must not start at the next boot either.
if [ -d /run/systemd/system ]; then
  for p in "${missing[@]}"; do
    case "$p" in
      prometheus | prometheus-node-exporter) systemctl disable -q "$p.service" 2>/dev/null || true ;;
    esac
  done
fi
