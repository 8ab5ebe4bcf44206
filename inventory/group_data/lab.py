"""Fleet-wide settings of the local lab (applies to every host of inventory/lab.py).

The lab shows every identity mode: device certificates on 8883, passwords over TLS on 8884
for clients without certificates, certificate plus password on 8885, and MQTT over
WebSockets (TLS, passwords) on 8443.
"""

from pyinfra import inventory

from iotfleet.lab.inventory import lab_device_names, lab_gateway_names
from iotfleet.lab.naming import lab_name

# pyinfra reads every file of group_data/ whatever the inventory: only the lab's own
# inventory (its hosts form the group "lab") reads the lab's state and makes its secrets.
_lab_inventory = bool(inventory.get_group("lab", None))

__all__ = [
    "espgw_wifi_passphrase",
    "espgw_wifi_ssid",
    "fleet_clients",
    "fleet_devices",
    "fleet_name",
    "mosquitto_listeners",
    "pki_passphrase_generated",
    "ssh_hardening_enabled",
]

fleet_name = lab_name(None)

fleet_devices = [
    # Software devices (tests, demos) and one stolen device, revoked everywhere.
    {"id": "sensor-1", "group": "software"},
    {"id": "sensor-2", "group": "software"},
    {"id": "sensor-stolen", "group": "software", "revoked": "keyCompromise"},
    # One device per emulated ESP8266 board of the lab.
    *(
        {"id": name, "group": "gateways"}
        for name in (lab_gateway_names() if _lab_inventory else [])
    ),
    # `iotfleet lab up --devices N`: N more software devices (bench/scale.py).
    *({"id": name, "group": "software"} for name in (lab_device_names() if _lab_inventory else [])),
]

fleet_clients = [
    {"name": "ops", "roles": ["admin"]},
    {
        "name": "control-room",
        "roles": ["operator"],
        "auth": "certificate+password",
        "password": "generated",
    },
    {"name": "wallboard", "roles": ["dashboard"], "auth": "password", "password": "generated"},
]

mosquitto_listeners = [
    {"port": 8883},
    {"port": 8884, "auth": "password"},
    {"port": 8885, "auth": "certificate+password"},
    # MQTT over WebSockets (TLS) for browser dashboards: passwords, since Mosquitto does not
    # check the CRL on websockets listeners.
    {"port": 8443, "protocol": "websockets", "auth": "password"},
]

# Lab brokers are no jump hosts: sshd takes keys only, forwards nothing, offers modern
# algorithms only (the lab logs in as root with its own key).
ssh_hardening_enabled = True

# The lab's CA passphrase is generated once (by the first rollout) and kept with the lab
# fleet's state (0600).
pki_passphrase_generated = _lab_inventory

espgw_wifi_ssid = "iotfleet-lab"
espgw_wifi_passphrase = "generated"
