"""The systemd unit that loads the broker's nftables ruleset at boot (Mosquitto requires it)."""

FIREWALL_UNIT = "iotfleet-firewall.service"
