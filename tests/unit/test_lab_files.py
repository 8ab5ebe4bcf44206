"""Files the lab writes: /etc/hosts blocks, host identity, known_hosts, apt sources, mirror."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from iotfleet.lab import packages
from iotfleet.lab.errors import LabError
from iotfleet.lab.hostsfile import replace_block, update_hosts_file
from iotfleet.lab.identity import (
    HostEntry,
    ensure_client_key,
    known_hosts_text,
    new_ed25519,
    write_identity,
)
from iotfleet.lab.mirror import machine_mirror, mirror_from_deb822, mirror_from_one_line

B1 = HostEntry("10.213.0.11", "broker1.lab.iotfleet.test", "broker1")
B2 = HostEntry("10.213.0.12", "broker2.lab.iotfleet.test", "broker2")


def test_hosts_block_added_replaced_removed() -> None:
    original = "127.0.0.1 localhost\n"
    one = replace_block(original, "lab", [B1])
    assert one == (
        "127.0.0.1 localhost\n# BEGIN iotfleet lab lab\n"
        "10.213.0.11\tbroker1.lab.iotfleet.test broker1\n# END iotfleet lab lab\n"
    )
    two = replace_block(one, "lab", [B1, B2])
    assert two.count("# BEGIN iotfleet lab lab") == 1
    assert "broker2.lab.iotfleet.test" in two
    other = replace_block(two, "other", [B1])
    assert replace_block(other, "lab", []) == replace_block(original, "other", [B1])
    assert replace_block(replace_block(other, "other", []), "lab", []) == original


def test_update_hosts_file_keeps_mode_and_other_lines(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    hosts.chmod(0o644)
    update_hosts_file("lab", [B1], tmp_path / "lock", hosts)
    assert "broker1.lab.iotfleet.test" in hosts.read_text()
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o644
    update_hosts_file("lab", [], tmp_path / "lock", hosts)
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def test_client_key_is_private_and_stable(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    public = ensure_client_key(key, "iotfleet-lab-x")
    assert public.startswith("ssh-ed25519 ") and public.endswith(" iotfleet-lab-x")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert ensure_client_key(key, "iotfleet-lab-x") == public


def test_identity_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    private, public = new_ed25519("root@broker1")
    write_identity(
        root,
        B1,
        "a" * 32,
        private,
        public,
        "ssh-ed25519 AAAA lab",
        [B1, B2],
        "http://10.213.0.1:8642/",
    )
    assert (root / "etc/hostname").read_text() == "broker1\n"
    assert (root / "etc/machine-id").read_text() == "a" * 32 + "\n"
    assert stat.S_IMODE((root / "etc/ssh/ssh_host_ed25519_key").stat().st_mode) == 0o600
    assert "10.213.0.12\tbroker2.lab.iotfleet.test broker2" in (root / "etc/hosts").read_text()
    assert stat.S_IMODE((root / "root/.ssh/authorized_keys").stat().st_mode) == 0o600
    sources = (root / "etc/apt/sources.list.d/iotfleet-lab.list").read_text()
    assert sources == "deb [trusted=yes] http://10.213.0.1:8642/ ./\n"


def test_known_hosts_lists_every_name_of_a_host() -> None:
    text = known_hosts_text([(B1, "ssh-ed25519 AAAA1"), (B2, "ssh-ed25519 AAAA2")])
    assert text.splitlines() == [
        "broker1.lab.iotfleet.test,broker1,10.213.0.11 ssh-ed25519 AAAA1",
        "broker2.lab.iotfleet.test,broker2,10.213.0.12 ssh-ed25519 AAAA2",
    ]


DEB822 = """\
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
# a comment
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
"""


def test_mirror_from_deb822_skips_security_and_sources() -> None:
    assert mirror_from_deb822(DEB822) == "http://mirror.example/debian/"


def test_mirror_from_one_line() -> None:
    text = (
        "# deb http://old.example/debian bookworm main\n"
        "deb http://sec.example/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert mirror_from_one_line(text) == "http://mirror.example/debian"


def test_machine_mirror_prefers_deb822_and_explains_absence(tmp_path: Path) -> None:
    deb822, one_line = tmp_path / "debian.sources", tmp_path / "sources.list"
    with pytest.raises(LabError, match="Debian mirror"):
        machine_mirror(deb822, one_line)
    one_line.write_text("deb http://one.example/debian bookworm main\n")
    assert machine_mirror(deb822, one_line) == "http://one.example/debian"
    deb822.write_text(DEB822)
    assert machine_mirror(deb822, one_line) == "http://mirror.example/debian"


def test_cache_key_covers_suite_and_package_sets() -> None:
    key = packages.cache_key("bookworm")
    assert key.startswith("bookworm-")
    assert key == packages.cache_key("bookworm")
    assert key != packages.cache_key("trixie")
    assert key != packages.cache_key("bookworm", repo=(*packages.REPO_PACKAGES, "curl"))
    assert {"mosquitto", "mosquitto-clients", "nftables", "hello"} <= set(packages.REPO_PACKAGES)
