"""The local lab: real Debian hosts (systemd-nspawn + overlayfs) and emulated gateways.

One module, one job:

- ``naming``     lab names, short tags, interface/namespace names, FQDNs, gateway MACs
- ``state``      the lab's state file (pydantic, atomic writes) and where a lab lives
- ``preflight``  checks before anything is made (root, tools, subnet, disk, emulator)
- ``packages``   the package sets (one constant each) and the cache key they form
- ``mirror``     the control machine's Debian mirror, read from its apt sources
- ``base``       the shared debootstrap root and the flat apt repository, cached per key
- ``network``    bridge, network namespaces and veth links
- ``identity``   what makes one host unique (hostname, machine-id, SSH host key, sources)
- ``boot``       start, wait for and stop one host under systemd-nspawn
- ``procs``      processes started by the lab: start detached, probe and stop by PID
- ``repo``       the HTTP server giving the hosts their package source
- ``gateways``   emulated ESP8266 boards on loopback TCP ports
- ``hostsfile``  the marked block in /etc/hosts
- ``attach``     a board as a device path inside a host (``lab attach/detach``)
- ``serial_bridge`` the bridge ``attach`` runs there: a pty linked at the path, relayed
- ``lab``        orchestration: ``up``, ``down``, ``status``
- ``inventory``  the lab as pyinfra inventory groups
"""

from __future__ import annotations

from iotfleet.lab.errors import LabError

__all__ = ["LabError"]
