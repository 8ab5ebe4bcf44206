"""What a crashed run of a lab left (nspawn processes, namespaces, links, mounts), found by
the lab's tag and directory, and removed."""

from __future__ import annotations

from pathlib import Path

from iotfleet.lab import naming, network
from iotfleet.lab.boot import unmount
from iotfleet.lab.procs import kill_pids, pids_in_netns, run
from iotfleet.lab.state import LabPaths


def sweep_leftovers(name: str, paths: LabPaths) -> list[str]:
    """Remove kernel objects and mounts a crashed run of this lab left, found by the lab's
    tag (names) and directory (mounts). Returns what it removed."""
    tag = naming.lab_tag(name)
    removed: list[str] = []
    strays = nspawn_pids_booting(paths.hosts_dir)
    if strays:
        kill_pids(strays)
        removed.append(f"nspawn processes {', '.join(map(str, strays))}")
    for ns in network.netns_names():
        if ns.startswith(f"iof-{tag}-"):
            kill_pids(pids_in_netns(network.NETNS_DIR / ns))
            run(["ip", "netns", "del", ns], timeout=10, check=False)
            removed.append(f"netns {ns}")
    for link in network.link_names():
        if link.startswith(f"iof{tag}"):
            network.delete_link(link)
            removed.append(f"link {link}")
    for mount_point in sorted(_mounts_under(paths.root), key=len, reverse=True):
        unmount(Path(mount_point))
        removed.append(f"mount {mount_point}")
    return removed


def nspawn_pids_booting(under: Path, proc: Path = Path("/proc")) -> list[int]:
    """systemd-nspawn processes booting ``under`` or a root below it: this lab's, even those
    a crashed run started but could not record."""
    exact = f"--directory={under}"
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        args = [a.decode(errors="replace") for a in argv]
        if (
            args
            and args[0].endswith("systemd-nspawn")
            and any(a == exact or a.startswith(exact + "/") for a in args)
        ):
            found.append(int(entry.name))
    return found


def _mounts_under(root: Path, mounts: Path = Path("/proc/self/mounts")) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) > 1:
            point = parts[1].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found
