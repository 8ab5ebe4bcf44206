"""The control machine's /etc/hosts: one marked block per lab, so that clients on the
control machine (mosquitto_sub, paho, TLS hostname checks) resolve the lab's FQDNs."""

from __future__ import annotations

import errno
from pathlib import Path

from iotfleet.lab.identity import HostEntry, hosts_table
from iotfleet.lab.state import exclusive_lock, write_atomic

ETC_HOSTS = Path("/etc/hosts")


def begin_marker(lab: str) -> str:
    return f"# BEGIN iotfleet lab {lab}"


def end_marker(lab: str) -> str:
    return f"# END iotfleet lab {lab}"


def replace_block(text: str, lab: str, entries: list[HostEntry]) -> str:
    """``text`` with the lab's block replaced by ``entries`` (removed if there are none)."""
    begin, end = begin_marker(lab), end_marker(lab)
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
            continue
        if inside:
            if stripped == end:
                inside = False
            continue
        kept.append(line)
    result = "".join(kept)
    if entries:
        if result and not result.endswith("\n"):
            result += "\n"
        result += f"{begin}\n{hosts_table(entries)}{end}\n"
    return result


def update_hosts_file(
    lab: str, entries: list[HostEntry], lock: Path, path: Path = ETC_HOSTS
) -> None:
    """Set the lab's block in ``path`` (under a lock shared by all labs)."""
    with exclusive_lock(lock, "/etc/hosts", timeout=60):
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        wanted = replace_block(current, lab, entries)
        if wanted == current:
            return
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        try:
            write_atomic(path, wanted, mode=mode)
        except OSError as exc:
            # /etc/hosts can be a bind mount (containers, sandboxes): rename fails there.
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                raise
            path.write_text(wanted)
