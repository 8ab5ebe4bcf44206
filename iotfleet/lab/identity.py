"""What makes one lab host unique, written into its own layer before it boots.

Every host starts from the same base, so each gets its own hostname, machine-id, SSH host
key, the lab's login key, the lab's /etc/hosts and an apt source pointing only at the lab.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from iotfleet.fs.atomic import write_file_atomically
from iotfleet.lab.state import write_atomic


@dataclass(frozen=True)
class HostEntry:
    """One line of the lab's hosts table."""

    address: str
    fqdn: str
    short: str


def new_machine_id() -> str:
    return uuid.uuid4().hex


def new_ed25519(comment: str) -> tuple[bytes, str]:
    """A fresh Ed25519 key: (OpenSSH private key bytes, ``ssh-ed25519 AAAA... comment``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, f"{public.decode()} {comment}"


def ensure_client_key(private_path: Path, comment: str) -> str:
    """The lab's login key (created 0600 if missing); returns its public line."""
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.is_file() and public_path.is_file():
        return public_path.read_text().strip()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.parent.chmod(0o700)
    private, public = new_ed25519(comment)
    # 0600 from the first byte: the private key is never world-readable, nor ever half there.
    write_file_atomically(private_path, private, mode=0o600)
    write_atomic(public_path, public + "\n")
    return public


def hosts_table(entries: list[HostEntry]) -> str:
    """Lines ``ADDRESS FQDN SHORT`` for /etc/hosts."""
    return "".join(f"{e.address}\t{e.fqdn} {e.short}\n" for e in entries)


def host_etc_hosts(me: HostEntry, lab_entries: list[HostEntry]) -> str:
    """A host's whole /etc/hosts: loopback, then every lab host (itself included)."""
    return (
        "# managed by iotfleet lab\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
        f"{hosts_table(lab_entries or [me])}"
    )


def known_hosts_text(lines: list[tuple[HostEntry, str]]) -> str:
    """known_hosts: each host's real key, under its FQDN, short name and address."""
    return "".join(f"{e.fqdn},{e.short},{e.address} {key}\n" for e, key in lines)


def apt_source_line(repo_url: str) -> str:
    # [trusted=yes]: the repository is the lab's own, served on the lab's bridge only.
    return f"deb [trusted=yes] {repo_url} ./\n"


def write_identity(
    root: Path,
    me: HostEntry,
    machine_id: str,
    host_key_private: bytes,
    host_key_public: str,
    authorized_key: str,
    lab_entries: list[HostEntry],
    repo_url: str,
) -> None:
    """Write the host's identity into its merged root (lands in its own upper layer)."""
    etc = root / "etc"
    write_atomic(etc / "hostname", me.short + "\n")
    write_atomic(etc / "machine-id", machine_id + "\n", mode=0o444)
    write_atomic(etc / "hosts", host_etc_hosts(me, lab_entries))
    ssh = etc / "ssh"
    key_path = ssh / "ssh_host_ed25519_key"
    write_file_atomically(key_path, host_key_private, mode=0o600, dir_mode=0o755)
    write_atomic(ssh / "ssh_host_ed25519_key.pub", host_key_public + "\n")
    root_ssh = root / "root" / ".ssh"
    root_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(root_ssh / "authorized_keys", authorized_key + "\n", mode=0o600)
    write_atomic(etc / "apt" / "sources.list.d" / "iotfleet-lab.list", apt_source_line(repo_url))


def update_etc_hosts(root: Path, me: HostEntry, lab_entries: list[HostEntry]) -> None:
    """Rewrite a (running) host's /etc/hosts after hosts were added or removed."""
    write_atomic(root / "etc" / "hosts", host_etc_hosts(me, lab_entries))
