"""Example fleet "plant-a": two brokers and one flash station. Copy it for your own fleet.

Hosts and per-host settings live here; fleet-wide settings (devices, clients, roles, PKI) live
in ``group_data/example.py`` (pyinfra applies it to every host of this inventory file).

    pyinfra inventory/example.py deploy.py
"""

brokers = [
    (
        "mqtt1.plant-a.example.net",
        {
            "ssh_hostname": "192.0.2.11",
            "ssh_user": "root",
            # A second, password-only TLS listener for dashboards without certificates.
            "mosquitto_listeners": [
                {"port": 8883},
                {"port": 8884, "auth": "password"},
            ],
        },
    ),
    ("mqtt2.plant-a.example.net", {"ssh_hostname": "192.0.2.12", "ssh_user": "root"}),
]

flash_stations = [
    (
        "@local",
        {
            # Real boards need a real firmware build (the default stand-in is refused for
            # them): build files/firmware/iotfleet-gateway/ with PlatformIO, see docs/gateways.md.
            "espgw_firmware": "files/firmware/iotfleet-gateway/.pio/build/d1_mini/firmware.bin",
            "espgw_boards": [
                {"port": "/dev/ttyUSB0", "device": "gw-0001", "mac": "18:fe:34:a1:00:01"},
                {"port": "/dev/ttyUSB1", "device": "gw-0002"},
            ],
        },
    ),
]
