"""Judge the Mosquitto package and its systemd unit: installed from the Debian archive,
enabled and running as mosquitto, sandboxed, its memory bounded."""

from __future__ import annotations

from collections.abc import Iterable

from iotfleet.check.host_facts import PACKAGED_BROKER, PackageOrigin, PackageState
from iotfleet.model import Broker
from iotfleet.mosquitto import layout

MAX_EXPOSURE = 1.5  # systemd-analyze security score the hardened unit must stay under


def package_problems(host: str, broker: Broker, state: PackageState) -> list[str]:
    if not state.status:
        return [f"Mosquitto is not installed on {host}"]
    want, _, current = state.status.partition(" ok ")
    if current != "installed":
        return [f"Mosquitto on {host} is not properly installed (dpkg: {state.status})"]
    problems = []
    pinned = broker.mosquitto.package_version
    if want == "hold" and pinned is None:
        problems.append(
            f"Mosquitto {state.version} on {host} is on hold: security updates will not be "
            "installed (the inventory pins no version)"
        )
    elif want != "install" and want != "hold":
        problems.append(f"Mosquitto on {host} is marked for removal (dpkg: {state.status})")
    if pinned is not None and state.version != pinned:
        problems.append(
            f"Mosquitto on {host} is {state.version}, the inventory pins {pinned} "
            "(mosquitto_package_version)"
        )
    return problems


def origin_problems(host: str, state: PackageState, origin: PackageOrigin) -> list[str]:
    """A Mosquitto that is not the Debian archive's: a binary replaced or run from elsewhere,
    or a package no configured archive has (a hand-built .deb)."""
    problems = [
        f"{path} on {host} is not the file of the Debian package mosquitto {state.version} "
        "(dpkg --verify: its checksum differs): a hand-installed binary"
        for path in origin.modified
    ]
    if origin.running and origin.running != PACKAGED_BROKER:
        problems.append(
            f"the broker on {host} runs {origin.running}, not the packaged {PACKAGED_BROKER}"
        )
    if state.version and not origin.sources:
        problems.append(
            f"Mosquitto {state.version} on {host} is in no configured Debian archive "
            "(apt-cache policy: only the local dpkg status): installed by hand"
        )
    return problems


def service_problems(host: str, enabled: bool, active: bool) -> list[str]:
    problems = []
    if not active:
        problems.append(f"mosquitto.service is not running on {host}")
    if not enabled:
        problems.append(f"mosquitto.service is not enabled on {host}: it will not start at boot")
    return problems


def user_problems(
    host: str, unit_user: str, main_user: str | None, processes: Iterable[tuple[str, int]]
) -> list[str]:
    problems = []
    expected = layout.RUN_USER
    if unit_user != expected:
        problems.append(
            f"mosquitto.service on {host} starts as {unit_user or 'root'} (User="
            f"{unit_user}), expected User={expected}: the broker starts with root privileges"
        )
    if main_user is None:
        problems.append(f"no running broker process on {host}")
    elif main_user != expected:
        problems.append(f"the broker process on {host} runs as {main_user}, expected {expected}")
    for user, pid in processes:
        if user != expected:
            problems.append(f"a mosquitto process (pid {pid}) on {host} runs as {user}")
    return problems


def sandbox_problems(
    host: str, broker: Broker, props: dict[str, str], exposure: float | None
) -> list[str]:
    capabilities = ""  # none: listener ports below 1024 are refused by the inventory
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": capabilities,
        "AmbientCapabilities": capabilities,
    }
    problems = []
    if layout.DROPIN not in props.get("DropInPaths", "").split():
        problems.append(
            f"the sandbox drop-in {layout.DROPIN} is not loaded for mosquitto.service on {host}"
        )
    for key, want in expected.items():
        got = props.get(key, "")
        if got != want:
            problems.append(
                f"mosquitto.service on {host} has {key}={got or '(empty)'}, "
                f"expected {key}={want or '(empty)'}"
            )
    if exposure is None:
        problems.append(f"systemd-analyze security gave no exposure score for mosquitto on {host}")
    elif exposure > MAX_EXPOSURE:
        problems.append(
            f"systemd-analyze security scores mosquitto on {host} {exposure} (expected "
            f"<= {MAX_EXPOSURE}): the sandbox is not in effect"
        )
    return problems


def memory_problems(host: str, broker: Broker, props: dict[str, str]) -> list[str]:
    """The unit has the memory ceiling the inventory sizes (MemoryHigh/MemoryMax)."""
    settings = broker.mosquitto
    problems = []
    for key, mib in (
        ("MemoryMax", settings.memory_ceiling_mb),
        ("MemoryHigh", settings.memory_high_mb),
    ):
        want = mib * 1024 * 1024
        got = props.get(key, "")
        if got != str(want):
            shown = "infinity (no limit)" if got in ("", "infinity") else f"{got} bytes"
            problems.append(
                f"mosquitto.service on {host} has {key}={shown}, expected {want} bytes "
                "(mosquitto_memory_max_mb): the broker may take all of the host's memory"
            )
    return problems
