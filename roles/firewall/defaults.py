"""Data keys of the firewall role (``firewall_*``), defined once in
``iotfleet.model.settings.FirewallSettings``:

    firewall_enabled          manage an nftables input filter on brokers
    firewall_ssh_port         SSH port kept open; default: the inventory's ssh_port (22)
    firewall_ssh_sources      networks allowed to SSH (CIDR); empty means anywhere
    firewall_extra_tcp_ports  more TCP ports to open
    firewall_password_rate    new connections/minute per source on password listeners (0: off)
    firewall_password_burst   connections a source may open at once before the rate applies
    firewall_password_limit_exempt  networks spared the limit (the host running iotfleet check)
"""

from iotfleet.model.settings import FirewallSettings, role_defaults

DEFAULTS = role_defaults(FirewallSettings, "firewall_")
