"""A gateway's identity switch survives a power cut at every point (docs/gateways.md, "Switching
identity"): the flash after the first k steps of a switch, booted by the simulator as the board
boots, always gives a certificate and key that belong together (OpenSSL loads them into the TLS
context), the old pair or the new one, and a re-key still waiting keeps its new key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotfleet.device import build_device_image, flash_layout
from iotfleet.device.contract import CERT_FILE, KEY_FILE, PENDING_CERT_FILE, PENDING_KEY_FILE
from iotfleet.device.littlefs_image import Remove, Rename, Write
from iotfleet.gateway import GatewaySimulator, read_flash_files
from iotfleet.gateway.flashfile import apply_flash_steps, write_flash_files
from iotfleet.gateway.identity import recovery_steps, switch_steps
from iotfleet.gateway.rekey import new_key_pem
from iotfleet.pki.testing import make_unrecorded_identity
from tests.unit.gateway_helpers import GatewayFleet, gateway_environment

LAYOUT = flash_layout("4M2M")
BOARDS = [{"port": "socket://127.0.0.1:1", "device": "gw-1"}]


@dataclass(frozen=True)
class Board:
    """A flash image of gw-1 with a re-key waiting (``/client.key.new``), and certificates the
    fleet's CA issued for its flashed key (a renewal) and for the new key (the re-key)."""

    flash: bytes
    old_cert: bytes
    old_key: bytes
    new_key: bytes
    renewed_cert: bytes  # same key
    rekeyed_cert: bytes  # for new_key

    def flash_file(self, tmp: Path) -> Path:
        path = tmp / "gw-1.flash"
        path.write_bytes(self.flash)
        return path


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    home = tmp_path_factory.mktemp("home")
    with gateway_environment(home):
        ctx = GatewayFleet(home, [{"id": "gw-1"}]).context(BOARDS)
        image = build_device_image(ctx, "gw-1")
        flash = bytearray(b"\xff" * LAYOUT.flash_size)
        flash[LAYOUT.fs_offset : LAYOUT.fs_offset + len(image.data)] = image.data
        path = home / "gw-1.flash"
        path.write_bytes(flash)
        new_key = new_key_pem("ec-p256")
        write_flash_files(path, {PENDING_KEY_FILE: new_key}, LAYOUT)  # as a re-key request does
        files = read_flash_files(path, LAYOUT)
        yield Board(
            flash=path.read_bytes(),
            old_cert=files[CERT_FILE],
            old_key=files[KEY_FILE],
            new_key=new_key,
            renewed_cert=make_unrecorded_identity(
                ctx.pki_settings, "gw-1", key_pem=files[KEY_FILE]
            ).certificate_pem,
            rekeyed_cert=make_unrecorded_identity(
                ctx.pki_settings, "gw-1", key_pem=new_key
            ).certificate_pem,
        )


def boot(path: Path) -> tuple[GatewaySimulator, dict[str, bytes], list[str]]:
    """Boot the simulator on the flash as ``iotfleet gateway run`` does; its TLS context loads
    the certificate and key with OpenSSL, which refuses a pair that does not belong together."""
    said: list[str] = []
    simulator = GatewaySimulator.from_flash(path, LAYOUT.name, log=said.append)
    return simulator, read_flash_files(path, LAYOUT), said


def test_the_switch_order_renames_the_key_before_the_certificate(board: Board) -> None:
    assert switch_steps(board.rekeyed_cert, new_key=True) == [
        Write(PENDING_CERT_FILE, board.rekeyed_cert),
        Rename(PENDING_KEY_FILE, KEY_FILE),
        Rename(PENDING_CERT_FILE, CERT_FILE),
    ]
    assert switch_steps(board.renewed_cert, new_key=False) == [
        Write(PENDING_CERT_FILE, board.renewed_cert),
        Rename(PENDING_CERT_FILE, CERT_FILE),
    ]


# (steps done before the power went, the pair after boot)
REKEY_CUTS = [(0, "old"), (1, "old"), (2, "new"), (3, "new")]


@pytest.mark.parametrize(("done", "pair"), REKEY_CUTS)
def test_a_power_cut_during_a_rekey_switch_boots_a_matching_pair(
    board: Board, tmp_path: Path, done: int, pair: str
) -> None:
    path = board.flash_file(tmp_path)
    apply_flash_steps(path, switch_steps(board.rekeyed_cert, new_key=True)[:done], LAYOUT)
    simulator, files, said = boot(path)
    old, new = (board.old_cert, board.old_key), (board.rekeyed_cert, board.new_key)
    expected = old if pair == "old" else new
    assert (simulator.bundle.certificate_pem, simulator.bundle.private_key_pem) == expected
    assert (files[CERT_FILE], files[KEY_FILE]) == expected
    assert PENDING_CERT_FILE not in files
    # The re-key's key is kept until its certificate is in place (retained, it comes again).
    assert files.get(PENDING_KEY_FILE) == (board.new_key if pair == "old" else None)
    assert ("a switch was cut short" in " ".join(said)) is (done in (1, 2))
    assert recovery_steps(files) == []  # nothing left for the next boot


@pytest.mark.parametrize(("done", "cert"), [(0, "old"), (1, "old"), (2, "renewed")])
def test_a_power_cut_during_a_renewal_while_a_rekey_waits(
    board: Board, tmp_path: Path, done: int, cert: str
) -> None:
    """A renewal on the same key while a re-key waits: undone unless complete, and the waiting
    key is never touched."""
    path = board.flash_file(tmp_path)
    apply_flash_steps(path, switch_steps(board.renewed_cert, new_key=False)[:done], LAYOUT)
    simulator, files, _ = boot(path)
    expected = board.old_cert if cert == "old" else board.renewed_cert
    assert simulator.bundle.certificate_pem == files[CERT_FILE] == expected
    assert simulator.bundle.private_key_pem == files[KEY_FILE] == board.old_key
    assert PENDING_CERT_FILE not in files and files[PENDING_KEY_FILE] == board.new_key


@pytest.mark.parametrize(("done", "cert"), [(0, "old"), (1, "renewed"), (2, "renewed")])
def test_a_power_cut_during_a_renewal_is_finished_at_boot(
    board: Board, tmp_path: Path, done: int, cert: str
) -> None:
    """No re-key waiting: a whole /client.pem.new for the key in place is renamed at boot."""
    path = board.flash_file(tmp_path)
    apply_flash_steps(path, [Remove(PENDING_KEY_FILE)], LAYOUT)
    apply_flash_steps(path, switch_steps(board.renewed_cert, new_key=False)[:done], LAYOUT)
    simulator, files, _ = boot(path)
    expected = board.old_cert if cert == "old" else board.renewed_cert
    assert simulator.bundle.certificate_pem == files[CERT_FILE] == expected
    assert files[KEY_FILE] == board.old_key and PENDING_CERT_FILE not in files


@pytest.mark.parametrize("waiting", [True, False], ids=["rekey-waiting", "no-rekey"])
@pytest.mark.parametrize("cut", [b"", b"-----BEGIN CERTIFICATE-----\nMIIB"], ids=["empty", "short"])
def test_a_certificate_cut_while_it_was_written_is_dropped(
    board: Board, tmp_path: Path, cut: bytes, waiting: bool
) -> None:
    """LittleFS may leave a file created at open and never closed (empty); a short one stands
    for any other torn write. Neither is renamed into place: the old pair stays."""
    path = board.flash_file(tmp_path)
    if not waiting:
        apply_flash_steps(path, [Remove(PENDING_KEY_FILE)], LAYOUT)
    apply_flash_steps(path, [Write(PENDING_CERT_FILE, cut)], LAYOUT)
    simulator, files, _ = boot(path)
    assert PENDING_CERT_FILE not in files
    assert simulator.bundle.certificate_pem == files[CERT_FILE] == board.old_cert
    assert simulator.bundle.private_key_pem == files[KEY_FILE] == board.old_key


def test_without_the_boot_recovery_a_cut_after_the_key_rename_would_not_start(
    board: Board, tmp_path: Path
) -> None:
    """Why the boot step exists: the flash after step 2 holds the new key with the old
    certificate, which OpenSSL refuses to pair (a board that needs a cable)."""
    from iotfleet.gateway import read_bundle

    path = board.flash_file(tmp_path)
    apply_flash_steps(path, switch_steps(board.rekeyed_cert, new_key=True)[:2], LAYOUT)
    with pytest.raises(Exception, match="key values mismatch"):
        GatewaySimulator(read_bundle(path, LAYOUT), flash_file=path, layout=LAYOUT.name)


def test_the_sketch_switches_in_the_same_order_and_recovers_at_boot() -> None:
    """The sketch cannot be compiled here (no Xtensa toolchain): its source at least does the
    steps in the documented order, and finishes or undoes a switch before reading its identity."""
    from tests.unit.gateway_helpers import REPO

    source = (REPO / "files/firmware/iotfleet-gateway/src/main.cpp").read_text()
    update = source[source.index("void certificateUpdate(") :]
    update = update[: update.index("\n}\n")]
    steps = [
        f'LittleFS.open("{PENDING_CERT_FILE}", "w")',
        f'LittleFS.rename("{PENDING_KEY_FILE}", "{KEY_FILE}")',
        f'LittleFS.rename("{PENDING_CERT_FILE}", "{CERT_FILE}")',
    ]
    positions = [update.index(step) for step in steps]
    assert positions == sorted(positions), "the sketch renames out of the documented order"
    boot = source[source.index("void loadContract(") :]
    assert boot.index("finishIdentitySwitch();") < boot.index(f'readFile("{CERT_FILE}"')
    recovery = source[source.index("void finishIdentitySwitch(") :]
    recovery = recovery[: recovery.index("\n}\n")]
    assert f'LittleFS.exists("{PENDING_KEY_FILE}")' in recovery  # renames not started: undo
    assert f'LittleFS.rename("{PENDING_CERT_FILE}", "{CERT_FILE}")' in recovery  # else finish
    assert "certifiesKey(" in recovery  # only a whole certificate for the key in place
