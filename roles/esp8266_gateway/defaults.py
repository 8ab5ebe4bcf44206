"""Data keys of the esp8266_gateway role (``espgw_*``).

Each key, its default and its one-line description are defined once, in
``iotfleet.model.settings.GatewaySettings`` (``iotfleet keys espgw_`` prints them):

    espgw_boards           boards on this flash station (port, device, mac, firmware, layout)
    espgw_firmware         default firmware image (flashed at 0x0)
    espgw_layout           default flash layout (4M2M: LittleFS at 0x200000)
    espgw_wifi_ssid        Wi-Fi network gateways join (required when boards are listed)
    espgw_wifi_passphrase  env:NAME, file:PATH or generated (required when boards are listed)
    espgw_brokers          broker hosts gateways connect to; default: every broker
    espgw_broker_port      broker port gateways connect to
    espgw_parallel         boards flashed at once
    espgw_reenroll         accept a new board (MAC) for an enrolled device id
    espgw_baud             serial speed for flashing
"""

from iotfleet.model.settings import GatewaySettings, role_defaults

DEFAULTS = role_defaults(GatewaySettings, "espgw_")
