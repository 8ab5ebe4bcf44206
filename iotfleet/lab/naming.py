"""Names derived from a lab's name: short tags, kernel object names, FQDNs, MACs.

Several labs coexist on one machine, so every kernel object a lab makes carries a short tag
derived from the lab's name. Interface names must fit IFNAMSIZ (15 characters + NUL).
"""

from __future__ import annotations

import hashlib
import os
import re

from iotfleet.lab.errors import LabError

DEFAULT_LAB = "lab"
LAB_ENV = "IOTFLEET_LAB"
DOMAIN = "iotfleet.test"
IFNAMSIZ = 15
# Espressif's OUI, so emulated boards look like the ESP8266 boards they stand in for.
ESPRESSIF_OUI = (0x18, 0xFE, 0x34)

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")


def lab_name(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The lab's name: ``explicit``, else ``$IOTFLEET_LAB``, else ``lab``; validated."""
    env = os.environ if environ is None else environ
    name = explicit or env.get(LAB_ENV) or DEFAULT_LAB
    return validate_lab_name(name)


def validate_lab_name(name: str) -> str:
    """Return ``name`` if it can be a DNS label part of every host's FQDN, else raise."""
    if not _NAME_RE.match(name):
        raise LabError(
            f"invalid lab name {name!r}: use 1-32 lowercase letters, digits or '-', "
            "starting with a letter (it becomes part of every host's DNS name)"
        )
    return name


def lab_tag(name: str) -> str:
    """Four hex digits identifying the lab in kernel object names."""
    return hashlib.sha256(name.encode()).hexdigest()[:4]


def bridge_name(tag: str) -> str:
    return _ifname(f"iof{tag}br")


def veth_name(tag: str, slot: int) -> str:
    """Control-machine end of a host's veth pair (the other end is ``eth0`` in the host)."""
    return _ifname(f"iof{tag}h{slot}")


def netns_name(tag: str, host: str) -> str:
    return f"iof-{tag}-{host}"


def machine_name(tag: str, host: str) -> str:
    """systemd-nspawn machine name: unique per machine (nspawn keeps per-name runtime dirs)."""
    return f"iof-{tag}-{host}"


def broker_name(index: int) -> str:
    return f"broker{index}"


HOST_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
GATEWAY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def gateway_name(index: int) -> str:
    return f"gw{index}"


def device_name(index: int) -> str:
    """Id of the lab fleet's ``index``-th extra software device (``lab up --devices``)."""
    return f"dev{index:06d}"


def fqdn(host: str, lab: str) -> str:
    return f"{host}.{lab}.{DOMAIN}"


def gateway_mac(lab: str, gateway: str) -> str:
    """A MAC that is the same for the same lab and board, with Espressif's OUI."""
    digest = hashlib.sha256(f"{lab}/{gateway}".encode()).digest()
    octets = [*ESPRESSIF_OUI, digest[0], digest[1], digest[2]]
    return ":".join(f"{o:02X}" for o in octets)


def _ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise LabError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name
