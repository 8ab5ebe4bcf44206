"""The firewall check judges the JSON the real ``nft -j list ruleset`` prints (captured from
rulesets loaded into a throwaway network namespace, see tests/unit/nft/capture.py): the ruleset
roles/firewall renders passes, and every accept wider than the inventory is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotfleet.check.firewall_rules import firewall_problems, parse_ruleset, source_limits
from iotfleet.model import Broker
from iotfleet.roles.firewall import render_ruleset
from tests.unit.nft.capture import BREAKAGES, HOST, judged_broker

NFT = Path(__file__).parent / "nft"


def captured(name: str) -> str:
    return (NFT / f"{name}.json").read_text()


@pytest.fixture
def broker() -> Broker:
    return judged_broker()


def with_firewall(broker: Broker, **changes: object) -> Broker:
    return broker.model_copy(update={"firewall": broker.firewall.model_copy(update=changes)})


def test_captures_are_of_the_current_template(broker: Broker) -> None:
    """The captured good ruleset is what the role renders today (else: run capture.py)."""
    assert (NFT / "good.nft").read_text() == render_ruleset(broker)
    assert {p.stem for p in NFT.glob("*.json")} == {"good", *BREAKAGES}


def test_the_rendered_ruleset_passes(broker: Broker) -> None:
    assert firewall_problems(HOST, broker, captured("good"), True) == []


def test_nothing_loaded_and_no_unit() -> None:
    broker = judged_broker()
    assert firewall_problems(HOST, broker, None, True) == [
        f"the firewall table inet iotfleet is not loaded on {HOST}: every port is open"
    ]
    assert firewall_problems(HOST, broker, '{"nftables": []}', True) == [
        f"the firewall table inet iotfleet is not loaded on {HOST}: every port is open"
    ]
    assert firewall_problems(HOST, broker, captured("good"), False) == [
        f"iotfleet-firewall.service is not enabled on {HOST}: no firewall after a reboot"
    ]


EXPECTED = {
    "iif-eth0": [
        f"the firewall on {HOST} accepts every connection arriving on eth0 (chain inet "
        "iotfleet input: 'meta iif \"eth0\" accept')"
    ],
    "saddr-any": [
        f"the firewall on {HOST} accepts every connection from 0.0.0.0/0 (chain inet iotfleet "
        "input: 'ip saddr 0.0.0.0/0 accept')"
    ],
    "second-table-accepts": [
        f"the firewall on {HOST} does not drop by default: chain inet other input (input "
        "hook, priority 10) has policy accept"
    ],
    "port-range": [
        f"the firewall on {HOST} accepts the port range 1-65535 from anywhere (chain inet "
        "iotfleet input: 'tcp dport 1-65535 accept')"
    ],
    "extra-port": [
        f"the firewall on {HOST} opens TCP 9999, which the inventory does not (chain inet "
        "iotfleet input: 'tcp dport { 8443, 8883, 8884, 8885, 9999 } ct state new accept')"
    ],
    "ssh-anywhere": [
        f"the firewall on {HOST} accepts SSH (port 22) from anywhere (0.0.0.0/0 and ::/0); "
        "firewall_ssh_sources allows only 10.0.0.0/8, 2001:db8::/32 (chain inet iotfleet "
        "input: 'tcp dport 22 ct state new accept')"
    ],
    "ssh-wider": [
        f"the firewall on {HOST} accepts SSH (port 22) from 0.0.0.0/1, wider than "
        "firewall_ssh_sources (10.0.0.0/8, 2001:db8::/32) (chain inet iotfleet input: "
        "'ip saddr { 0.0.0.0/1 } tcp dport 22 ct state new accept')"
    ],
    "jump-accept-all": [
        f"the firewall on {HOST} accepts every connection from anywhere (chain ip helper "
        "allow_all, reached as chain ip helper input jumps to allow_all: 'accept')"
    ],
    "no-limit": [
        f"the firewall on {HOST} does not limit new {family} connections per source to "
        "password listener(s) 8443, 8884, 8885 (the inventory asks for 60/minute, burst 60): "
        "passwords can be guessed as fast as the network allows"
        for family in ("IPv4", "IPv6")
    ],
    "policy-accept": [
        f"the firewall on {HOST} does not drop by default: chain inet iotfleet input (input "
        "hook, priority 0) has policy accept"
    ],
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_each_breakage_is_named(broker: Broker, name: str) -> None:
    assert firewall_problems(HOST, broker, captured(name), True) == EXPECTED[name]


def test_ssh_from_anywhere_is_fine_without_sources(broker: Broker) -> None:
    anywhere = with_firewall(broker, ssh_sources=[])
    assert firewall_problems(HOST, anywhere, captured("ssh-anywhere"), True) == []


def test_a_closed_inventory_port_is_named(broker: Broker) -> None:
    more = with_firewall(broker, extra_tcp_ports=[9100])
    assert firewall_problems(HOST, more, captured("good"), True) == [
        f"the firewall on {HOST} blocks TCP 9100 that the inventory opens"
    ]


def test_the_limit_is_the_inventory_one(broker: Broker) -> None:
    stricter = with_firewall(broker, password_rate=30, password_burst=40)
    problems = firewall_problems(HOST, stricter, captured("good"), True)
    assert problems == [
        f"the firewall on {HOST} limits {family} sources on 8443, 8884, 8885 to 60/minute, "
        "burst 60; the inventory asks for 30/minute, burst 40"
        for family in ("IPv4", "IPv6")
    ]
    not_exempt = with_firewall(broker, password_limit_exempt=[])
    assert firewall_problems(HOST, not_exempt, captured("good"), True) == [
        f"the firewall on {HOST} exempts 192.0.2.7/32 from the password listeners' limit, "
        "which firewall_password_limit_exempt does not"
    ]
    off = with_firewall(broker, password_rate=0)
    assert firewall_problems(HOST, off, captured("no-limit"), True) == []


def test_source_limits_read_from_json() -> None:
    ruleset = parse_ruleset(captured("good"))
    chain = ruleset.chain("inet", "iotfleet", "input")
    assert chain is not None
    limits = source_limits(chain)
    assert [(lim.family, sorted(lim.ports), lim.rate, lim.per, lim.burst) for lim in limits] == [
        (4, [8443, 8884, 8885], 60, "minute", 60),
        (6, [8443, 8884, 8885], 60, "minute", 60),
    ]
    assert [str(n) for n in limits[0].exempt] == ["192.0.2.7/32"]


def test_rendered_limit_without_password_listeners(broker: Broker) -> None:
    certificates_only = broker.model_copy(
        update={
            "mosquitto": broker.mosquitto.model_copy(
                update={"listeners": [broker.mosquitto.listeners[0]]}
            )
        }
    )
    ruleset = render_ruleset(certificates_only)
    assert "password_sources" not in ruleset
    assert "tcp dport { 8883 } ct state new accept" in ruleset
