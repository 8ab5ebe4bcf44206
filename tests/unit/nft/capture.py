"""Capture what the real ``nft -j list ruleset`` prints for the good ruleset and each breakage.

The unit tests judge these files (``<name>.nft`` loaded, ``<name>.json`` as nft printed it).
Regenerate after changing roles/firewall/templates/firewall.nft.j2 (needs root and nft; each
ruleset is loaded into a throwaway network namespace, deleted afterwards)::

    sudo .venv/bin/python -m tests.unit.nft.capture
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from iotfleet.model import Broker, RawHost, build_fleet
from iotfleet.roles.firewall import render_ruleset

HERE = Path(__file__).parent
HOST = "mqtt1.example.net"
LISTENERS = [
    {"port": 8883},
    {"port": 8884, "auth": "password"},
    {"port": 8885, "auth": "certificate+password"},
    {"port": 8443, "protocol": "websockets", "auth": "password"},
    {"port": 1883, "bind_address": "127.0.0.1", "tls": False, "auth": "password"},
]
SSH_SOURCES = ["10.0.0.0/8", "2001:db8::/32"]
EXEMPT = ["192.0.2.7"]
OPEN_LINE = "tcp dport { 8443, 8883, 8884, 8885 } ct state new accept"
SSH_LINE = "ip saddr { 10.0.0.0/8 } tcp dport 22 ct state new accept"


def judged_broker() -> Broker:
    """The broker every captured ruleset is judged against."""
    data = {
        "fleet_name": "unit",
        "mosquitto_listeners": LISTENERS,
        "firewall_ssh_sources": SSH_SOURCES,
        "firewall_password_limit_exempt": EXEMPT,
    }
    return build_fleet([RawHost(HOST, ("brokers",), data)]).brokers[0]


def _before_open(rule: str) -> Callable[[str], str]:
    return lambda good: good.replace(OPEN_LINE, f"{rule}\n\t\t{OPEN_LINE}")


def _drop_limit(good: str) -> str:
    return "\n".join(line for line in good.split("\n") if "@password_sources" not in line)


SECOND_TABLE = """
table inet other {
	chain input {
		type filter hook input priority filter + 10; policy accept;
		tcp dport 8883 accept
	}
}
"""
JUMP_TABLE = """
table ip helper {
	chain allow_all {
		accept
	}
	chain input {
		type filter hook input priority filter - 10; policy drop;
		ct state established,related accept
		tcp dport 8883 jump allow_all
		jump allow_all
	}
}
"""

# name -> how it changes the good ruleset
BREAKAGES: dict[str, Callable[[str], str]] = {
    "iif-eth0": _before_open('iif "eth0" accept'),
    "saddr-any": _before_open("ip saddr 0.0.0.0/0 accept"),
    "second-table-accepts": lambda good: good + SECOND_TABLE,
    "port-range": _before_open("tcp dport 1-65535 accept"),
    "extra-port": lambda good: good.replace(OPEN_LINE, OPEN_LINE.replace("8885 }", "8885, 9999 }")),
    "ssh-anywhere": lambda good: good.replace(SSH_LINE, "tcp dport 22 ct state new accept"),
    "ssh-wider": lambda good: good.replace("{ 10.0.0.0/8 }", "{ 10.0.0.0/8, 0.0.0.0/1 }"),
    "jump-accept-all": lambda good: good + JUMP_TABLE,
    "no-limit": _drop_limit,
    "policy-accept": lambda good: good.replace("policy drop", "policy accept"),
}


def capture(name: str, ruleset: str) -> None:
    namespace = f"iotfleet-capture-{os.getpid()}"
    source = HERE / f"{name}.nft"
    source.write_text(ruleset)
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        # `iif "eth0"` needs the interface to exist (a broker's own, in the lab).
        subprocess.run(
            ["ip", "-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "eth1"],
            check=True,
        )
        subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", str(source)], check=True)
        printed = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "-j", "list", "ruleset"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)
    (HERE / f"{name}.json").write_text(printed)


def main() -> None:
    good = render_ruleset(judged_broker())
    capture("good", good)
    for name, breakage in BREAKAGES.items():
        broken = breakage(good)
        assert broken != good, f"breakage {name} did not change the ruleset"
        capture(name, broken)


if __name__ == "__main__":
    main()
