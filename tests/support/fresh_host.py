"""Take a lab host back to before any rollout: what a first rollout must find.

Labs are shared by the integration modules of a session, so a module that asserts what a
first rollout does cannot count on running first: it wipes what iotfleet puts on a broker.
"""

from __future__ import annotations

from tests.integration.conftest import LabHost, RunningLab

WIPE = " ; ".join(
    [
        "systemctl stop mosquitto iotfleet-firewall 2>/dev/null",
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq mosquitto mosquitto-clients "
        ">/dev/null 2>&1",
        "rm -rf /etc/mosquitto /etc/iotfleet /var/lib/iotfleet /var/lib/mosquitto "
        "/usr/local/lib/iotfleet /etc/systemd/system/mosquitto.service.d "
        "/etc/systemd/system/iotfleet-firewall.service "
        "/etc/ssh/sshd_config.d/00-iotfleet-hardening.conf",
        "nft delete table inet iotfleet 2>/dev/null",
        "systemctl daemon-reload",
        "systemctl reload ssh",
        "true",
    ]
)


def wipe_iotfleet(lab: RunningLab, host: LabHost) -> None:
    """Remove Mosquitto and everything iotfleet installed on ``host``."""
    lab.ssh(host, WIPE, timeout=300)
