"""The shared base root (debootstrap) and the flat apt repository, cached per suite + packages.

Built once into a temporary directory and renamed into place, under a lock, so that two labs
asking for the same base at once build it once, and a half-built base is never used.
Every host's overlay uses ``rootfs`` read-only as its lower layer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from iotfleet.lab import packages
from iotfleet.lab.errors import LabError
from iotfleet.lab.procs import run
from iotfleet.lab.progress import Reporter
from iotfleet.lab.state import exclusive_lock, write_atomic

# Units a lab host does without. apt-daily* would grab the dpkg lock at random moments and
# break `apt-get install` in tests; the gettys and disk timers only cost memory in a container.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "console-getty.service",
    "getty@.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
)

SSHD_DROP_IN = """\
# managed by iotfleet lab: one host key per host (written by the lab), keys only, no DNS waits
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

# Bytes the base and repository need while being built (debootstrap + download + repo).
BUILD_BYTES = 1200 * 1024 * 1024


@dataclass(frozen=True)
class BaseCache:
    """One cache entry: a bootable root and the .debs the hosts may install."""

    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def repo(self) -> Path:
        return self.path / "repo"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    def is_complete(self) -> bool:
        return self.meta.is_file() and (self.repo / "Packages").is_file()


def cache_root(state: Path) -> Path:
    return state / "cache"


def cached_base(state: Path, suite: str) -> BaseCache:
    return BaseCache(cache_root(state) / packages.cache_key(suite))


def ensure_base(state: Path, suite: str, mirror: str, reporter: Reporter) -> BaseCache:
    """The cache entry for ``suite`` and today's package sets, built if missing."""
    base = cached_base(state, suite)
    if base.is_complete():
        return base
    lock = cache_root(state) / f".{base.path.name}.lock"
    with exclusive_lock(lock, f"the {suite} base build", timeout=1800):
        if base.is_complete():  # another lab built it while we waited
            return base
        task = reporter.task(f"Building the {suite} base (once per suite)", total=4)
        build = Path(tempfile.mkdtemp(prefix=f".build-{base.path.name}-", dir=base.path.parent))
        try:
            rootfs, repo = build / "rootfs", build / "repo"
            _debootstrap(suite, rootfs, mirror)
            reporter.advance(task, f"Downloading the {suite} package source")
            _download_repo_debs(rootfs, repo)
            reporter.advance(task, f"Indexing the {suite} package source")
            _index_repo(repo)
            reporter.advance(task, f"Preparing the {suite} base")
            _customise(rootfs)
            write_atomic(
                build / "meta.json",
                json.dumps(
                    {
                        "suite": suite,
                        "mirror": mirror,
                        "base_packages": list(packages.BASE_PACKAGES),
                        "repo_packages": list(packages.REPO_PACKAGES),
                        "format": packages.BASE_FORMAT,
                    },
                    indent=2,
                ),
            )
            if base.path.exists():  # an incomplete entry from a crashed build
                shutil.rmtree(base.path)
            build.rename(base.path)
            reporter.done(task, f"Built the {suite} base")
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return base


def _debootstrap(suite: str, rootfs: Path, mirror: str) -> None:
    script = Path("/usr/share/debootstrap/scripts") / suite
    if not script.exists():
        raise LabError(f"debootstrap here does not know suite {suite!r} ({script} is missing)")
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages.BASE_PACKAGES)}",
            suite,
            str(rootfs),
            mirror,
        ],
        timeout=1200,
    )


def _download_repo_debs(rootfs: Path, repo: Path) -> None:
    """Download the repo packages plus whatever they need beyond the base, inside the root.

    Running apt inside the fresh root (with the machine's mirror, which debootstrap wrote to
    its sources.list) resolves dependencies against exactly what every host already has.
    """
    shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    inside = "/iotfleet-repo"
    (rootfs / inside.lstrip("/") / "partial").mkdir(parents=True)
    run(
        [
            "chroot",
            str(rootfs),
            "apt-get",
            "install",
            "--download-only",
            "-y",
            "-q",
            "-o",
            f"Dir::Cache::Archives={inside}/",
            *packages.REPO_PACKAGES,
        ],
        timeout=900,
    )
    repo.mkdir()
    for deb in (rootfs / inside.lstrip("/")).glob("*.deb"):
        shutil.move(deb, repo / deb.name)
    shutil.rmtree(rootfs / inside.lstrip("/"))
    if not any(repo.glob("*.deb")):
        raise LabError("apt downloaded no package for the lab's package source")


def _index_repo(repo: Path) -> None:
    """Make ``repo`` a flat apt repository (``deb [trusted=yes] URL ./``)."""
    packages_index = run(["apt-ftparchive", "packages", "."], timeout=300, cwd=repo).stdout
    (repo / "Packages").write_text(packages_index)
    release = run(["apt-ftparchive", "release", "."], timeout=300, cwd=repo).stdout
    (repo / "Release").write_text(release)


def _customise(rootfs: Path) -> None:
    """Turn the debootstrap root into a base every host can share."""
    run(["chroot", str(rootfs), "apt-get", "clean"], timeout=120)
    lists = rootfs / "var/lib/apt/lists"
    for entry in lists.iterdir():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()
    # Hosts use only the lab's source (written per host); nothing points at the internet.
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "etc/apt/sources.list").unlink()
    for entry in (rootfs / "etc/apt/sources.list.d").glob("*"):
        entry.unlink()
    # Identity is per host: no shared host keys, machine-id or hostname in the base.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (rootfs / "etc/ssh/sshd_config.d/iotfleet-lab.conf").write_text(SSHD_DROP_IN)
    (rootfs / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "var/lib/dbus/machine-id").unlink()
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "etc/hostname").unlink()
    (rootfs / "etc/resolv.conf").write_text("# iotfleet lab: no DNS; lab names are in /etc/hosts\n")
    units = rootfs / "etc/systemd/system"
    for unit in MASKED_UNITS:
        target = units / unit
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to("/dev/null")
