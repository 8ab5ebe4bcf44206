"""The local lab: real Debian hosts (systemd-nspawn + overlayfs) and emulated gateways.

One module, one job:

- ``naming``     lab names, short tags, interface/namespace names, FQDNs, gateway MACs
- ``state``      the lab's state file (pydantic, atomic writes), where a lab lives, its neighbours
- ``preflight``  checks before anything is made (root, tools, subnet, disk, emulator)
- ``packages``   the package sets (one constant each) and the cache key they form
- ``mirror``     the control machine's Debian mirror, read from its apt sources
- ``base``       the shared debootstrap root and the flat apt repository, cached per key
- ``network``    bridge, network namespaces, veth links and the lab's addresses
- ``identity``   what makes one host unique (hostname, machine-id, SSH host key, sources)
- ``boot``       start, wait for and stop one host under systemd-nspawn
- ``procs``      processes started by the lab: start detached, probe and stop by PID
- ``repo``       the HTTP server giving the hosts their package source
- ``gateways``   emulated ESP8266 boards on loopback TCP ports
- ``hostsfile``  the marked block in /etc/hosts
- ``attach``     a board as a device path inside a host (``lab attach/detach``)
- ``serial_bridge`` the bridge ``attach`` runs there: a pty linked at the path, relayed
- ``request``    what ``lab up`` was asked for, and the hosts and boards that means
- ``environment`` what the lab takes from the machine (paths, tools, locks); tests pass their own
- ``up``         ``lab up``: converge a lab to the asked size, saving state after each step
- ``hosts``      add, boot (in parallel), stop and remove the lab's hosts
- ``down``       ``lab down``: remove everything a lab made
- ``leftovers``  find and remove what a crashed run left (processes, namespaces, links, mounts)
- ``status``     ``lab status``: probe every host and board
- ``inventory``  the lab as pyinfra inventory groups
"""

from __future__ import annotations

from iotfleet.lab.errors import LabError

__all__ = ["LabError"]
