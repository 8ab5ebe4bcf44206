"""Debian package installation that heals: shared by the roles that install packages.

One remote command per install, which:

- removes a stale service-start guard (``/usr/sbin/policy-rc.d``) an earlier iotfleet left
  behind (the old one was ``exit 101`` forever: no package on the host could start or restart
  its service on upgrade once a run died while it was in place);
- places its own guard, so that a package's maintainer scripts do not start a stock service
  (Mosquitto's is a plain broker on localhost:1883) before the hardened configuration is in
  place. The guard says "no" only while the process that placed it runs (its PID and start
  time are written into it), and the same command removes it on exit, Ctrl-C or hang-up (a
  trap): killed with SIGKILL or by a power cut, the file left behind allows every start;
- repairs a dpkg that a killed run interrupted (``dpkg --configure -a``, then a reinstall of
  what a killed unpack left half-installed), then installs.
"""

from __future__ import annotations

import shlex
from collections.abc import Generator, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import StringCommand, operation

from iotfleet.model import Broker
from iotfleet.roles.dpkg_health import (
    DPKG_PENDING_TEST,
    GUARD,
    GUARD_MARK,
    STALE_TEST,
)
from iotfleet.roles.host_state import HostQuery, host_state

MOSQUITTO_PACKAGES = ("mosquitto", "mosquitto-clients")
# The broker's apply script finds local addresses and busy ports with ip and ss.
APPLY_SCRIPT_PACKAGES = ("iproute2",)
# The guard names its owner, the installing shell, by PID and start time (a reused PID has
# another start time), so it refuses starts only while that shell runs.
_GUARD_LINES = (
    "#!/bin/sh",
    GUARD_MARK,
    "# No service starts while iotfleet installs packages (process @PID@); once that process",
    "# is gone (finished, killed, power cut), every start is allowed.",
    '[ "$(cut -d" " -f22 /proc/@PID@/stat 2>/dev/null)" = "@START@" ] && exit 101',
    "exit 0",
)
_PLACE_GUARD = (
    f"if [ ! -e {GUARD} ]; then\n"
    "  start=$(cut -d' ' -f22 /proc/$$/stat)\n"
    f"  printf '%s\\n' {' '.join(shlex.quote(line) for line in _GUARD_LINES)} |\n"
    f'    sed "s/@PID@/$$/g; s/@START@/$start/g" >{GUARD}.iotfleet\n'
    f"  chmod 755 {GUARD}.iotfleet && mv -f {GUARD}.iotfleet {GUARD} && made=1\n"
    "fi"
)
_APT = "DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Options::=--force-confold"
# Packages `dpkg --configure -a` cannot repair: wanted installed ("i") but half-installed (a
# killed unpack) or flagged reinstall-required; only reinstalling them from the archive does.
# (A package being removed, "r"/"p", is left to its remover.)
HALF_INSTALLED_QUERY = (
    "dpkg-query -W -f='${db:Status-Abbrev}|${binary:Package}\\n' | "
    "awk -F'|' 'substr($1, 1, 1) == \"i\" && "
    '(substr($1, 2, 1) == "H" || substr($1, 3, 1) == "R") { print $2 }\''
)


def packages_query(packages: Sequence[str]) -> HostQuery:
    """What ``install_debs`` reads of a host: the packages, and dpkg's health."""
    return HostQuery(packages=frozenset(packages), package_health=True)


def broker_packages(broker: Broker) -> tuple[list[str], dict[str, str]]:
    """(names, {name: version}) of everything a broker needs from Debian: Mosquitto at the
    inventory's version, the tools the apply script runs (``ip``, ``ss``), nftables when the
    firewall is enabled. Installed in one apt transaction by whichever role runs first."""
    names = [
        *MOSQUITTO_PACKAGES,
        *APPLY_SCRIPT_PACKAGES,
        *(("nftables",) if broker.firewall.enabled else ()),
    ]
    version = broker.mosquitto.package_version
    return names, ({name: version for name in MOSQUITTO_PACKAGES} if version else {})


# pyinfra state -> host name -> install operation -> the apt specs it installs. Operations are
# planned before any runs (and, when pyinfra asks first, planned and then run again): a later
# install operation leaves out what an earlier one of the same run covers, never its own.
_queued: WeakKeyDictionary[Any, dict[str, dict[str, set[str]]]] = WeakKeyDictionary()


def missing_packages(
    installed: dict[str, list[str]],
    packages: Sequence[str],
    version: str | None = None,
    versions: Mapping[str, str] | None = None,
) -> list[str]:
    """apt specs (``name`` or ``name=version``) of the packages not installed as wanted;
    ``versions`` pins single packages, ``version`` every other one."""
    specs = []
    for name in packages:
        wanted = (versions or {}).get(name, version)
        if name not in installed or (wanted is not None and wanted not in installed[name]):
            specs.append(f"{name}={wanted}" if wanted else name)
    return specs


def healing_install_script(specs: Sequence[str], update: bool = True) -> str:
    """The remote script: drop a stale guard, guard, repair dpkg, install, unguard."""
    lines = [
        "set -e",
        "made=0",
        f'unguard() {{ if [ "$made" = 1 ]; then rm -f {GUARD}; fi; }}',
        "trap unguard EXIT",
        "trap 'exit 129' HUP",
        "trap 'exit 130' INT",
        "trap 'exit 143' TERM",
        f"if [ -e {GUARD} ] && {STALE_TEST}; then rm -f {GUARD}; fi",
    ]
    if specs:
        lines.append(_PLACE_GUARD)
    lines.append(
        f"if {DPKG_PENDING_TEST}; then\n"
        "  echo 'iotfleet: repairing an interrupted dpkg (dpkg --configure -a)'\n"
        # Packages waiting on a half-installed one stay unconfigured (non-zero): go on to the
        # reinstall, then configure again, this time required to succeed.
        "  DEBIAN_FRONTEND=noninteractive dpkg --force-confold --configure -a || true\n"
        f"  broken=$({HALF_INSTALLED_QUERY})\n"
        '  if [ -n "$broken" ]; then\n'
        "    echo 'iotfleet: reinstalling what a killed unpack left half-installed:' $broken\n"
        f"    {_APT} update\n"
        f"    {_APT} install -y --reinstall --no-install-recommends $broken\n"
        "  fi\n"
        "  DEBIAN_FRONTEND=noninteractive dpkg --force-confold --configure -a\n"
        "fi"
    )
    if specs:
        if update:
            lines.append(f"{_APT} update")
        lines.append(
            f"{_APT} install -y --no-install-recommends "
            + " ".join(shlex.quote(spec) for spec in specs)
        )
    return "\n".join(lines) + "\n"


@operation()
def install_debs(
    packages: Sequence[str],
    version: str | None = None,
    versions: Mapping[str, str] | None = None,
) -> Generator[Any, None, None]:
    """Install Debian packages without letting them start services, healing the host first.
    What an earlier install of this run on the same host already covers is not asked again.

    + packages: package names
    + version: the version every package must have (none: any)
    + versions: the versions of single packages (over ``version``)
    """
    by_operation = _queued.setdefault(host.state, {}).setdefault(host.name, {})
    this = str(host.current_op_hash)
    order = list(by_operation)  # the install operations in the order the run added them
    before = order[: order.index(this)] if this in order else order
    earlier = set().union(*(by_operation[op] for op in before))
    live = host_state(packages_query(packages))
    specs = [
        spec
        for spec in missing_packages(live.packages, packages, version, versions)
        if spec not in earlier
    ]
    # An earlier install of this run heals the host first (its script repairs dpkg).
    healed_before = bool(before)
    stale_guard, dpkg_interrupted = (
        (False, False) if healed_before else (live.stale_guard, live.dpkg_interrupted)
    )
    by_operation[this] = set(specs)
    if not specs and not stale_guard and not dpkg_interrupted:
        host.noop(f"{', '.join(packages)} installed")
        return
    yield StringCommand("sh", "-c", shlex.quote(healing_install_script(specs)))
