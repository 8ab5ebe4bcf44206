"""Names derived from a lab's name."""

from __future__ import annotations

import pytest

from iotfleet.lab import naming
from iotfleet.lab.errors import LabError


def test_lab_name_precedence() -> None:
    assert naming.lab_name(None, environ={}) == "lab"
    assert naming.lab_name(None, environ={"IOTFLEET_LAB": "class-a"}) == "class-a"
    assert naming.lab_name("mine", environ={"IOTFLEET_LAB": "class-a"}) == "mine"


@pytest.mark.parametrize("bad", ["", "Lab", "1lab", "lab_x", "a" * 40, "lab-", "x.y"])
def test_invalid_lab_names_are_refused(bad: str) -> None:
    with pytest.raises(LabError, match="invalid lab name"):
        naming.validate_lab_name(bad)


def test_kernel_names_fit_ifnamsiz_and_differ_between_labs() -> None:
    a, b = naming.lab_tag("itest-bookworm"), naming.lab_tag("itest-trixie")
    assert a != b and len(a) == 4
    for tag in (a, b):
        assert len(naming.bridge_name(tag)) <= naming.IFNAMSIZ
        assert len(naming.veth_name(tag, 240)) <= naming.IFNAMSIZ
    assert naming.netns_name(a, "broker1") != naming.netns_name(b, "broker1")


def test_fqdn() -> None:
    assert naming.fqdn("broker2", "lab") == "broker2.lab.iotfleet.test"


def test_gateway_mac_is_deterministic_with_espressif_oui() -> None:
    mac = naming.gateway_mac("lab", "gw1")
    assert mac == naming.gateway_mac("lab", "gw1")
    assert mac.startswith("18:FE:34:")
    assert mac != naming.gateway_mac("lab", "gw2")
    assert mac != naming.gateway_mac("other", "gw1")


def test_boards_are_gw1_to_gwn_unless_named() -> None:
    from iotfleet.lab.naming import gateway_mac
    from iotfleet.lab.request import NamedGateway, UpRequest, wanted_gateways

    assert wanted_gateways(UpRequest(name="x", gateways=2)) == {
        "gw1": gateway_mac("x", "gw1"),
        "gw2": gateway_mac("x", "gw2"),
    }
    named = UpRequest(name="x", named_gateways=(NamedGateway("alice-gw", "18:fe:34:00:00:01"),))
    assert wanted_gateways(named) == {"alice-gw": "18:fe:34:00:00:01"}


def test_hosts_are_broker1_to_brokern_unless_named() -> None:
    from iotfleet.lab.request import UpRequest, wanted_hosts

    assert wanted_hosts(UpRequest(name="x", brokers=2)) == ["broker1", "broker2"]
    assert wanted_hosts(UpRequest(name="x", host_names=("alice-broker",))) == ["alice-broker"]
