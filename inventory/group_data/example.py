"""Fleet-wide settings of the example fleet (applies to every host of inventory/example.py)."""

fleet_name = "plant-a"

fleet_devices = [
    {"id": "gw-0001", "group": "hall-1", "mac": "18:fe:34:a1:00:01"},
    {"id": "gw-0002", "group": "hall-2"},
    # A stolen gateway: its certificate is revoked and it disappears from every ACL.
    {"id": "gw-0003", "group": "hall-2", "revoked": "keyCompromise"},
]

fleet_clients = [
    {"name": "ops-alice", "roles": ["admin"]},
    {"name": "control-room", "roles": ["operator"]},
    # Passwords are never written here: env:NAME, file:PATH or generated (kept by iotfleet).
    {"name": "wallboard", "roles": ["dashboard"], "auth": "password", "password": "generated"},
]

fleet_roles = {
    # Extra roles on top of the built-in admin, dashboard and operator.
    "historian": {"read": ["devices/+/telemetry/#"]},
}

# The CA passphrase: a 0600 file outside the checkout (see the README). Losing it loses the CA;
# keep a copy apart from the backups of the PKI. (pki_passphrase_env names a variable instead.)
pki_passphrase_file = "~/.config/iotfleet/plant-a.pki-passphrase"

espgw_wifi_ssid = "plant-a-iot"
espgw_wifi_passphrase = "env:PLANT_A_WIFI_PASSPHRASE"
