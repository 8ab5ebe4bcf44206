"""Per-device secrets images: the file contract, the ESP8266 core's LittleFS geometry, layouts,
and every bad input named by device/station and key without leaking a secret."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from littlefs import LittleFS, UserContext

from iotfleet.device import (
    LAYOUTS,
    Bundle,
    DeviceImageError,
    FilesystemError,
    FlashLayout,
    UnknownLayoutError,
    build_device_image,
    build_littlefs_image,
    core_geometry,
    device_bundle,
    flash_layout,
    read_littlefs_image,
    reference_firmware,
)
from iotfleet.device.contract import (
    CA_FILE,
    CERT_FILE,
    CONFIG_FILE,
    KEY_FILE,
    MQTT_PASS_FILE,
    WIFI_PASS_FILE,
)
from iotfleet.device.image import wifi_passphrase_slot
from iotfleet.fleet.context import FleetContext
from iotfleet.fleet.credentials import rendering_secrets
from iotfleet.fs.stage import Stage
from tests.unit.gateway_helpers import (
    REPO,
    WIFI_ENV,
    WIFI_PASSPHRASE,
    GatewayFleet,
    gateway_environment,
)

DEVICES = [
    {"id": "gw-1"},
    {"id": "gw-2", "password": "generated"},
    {"id": "gw-old", "revoked": "keyCompromise"},
]
BOARDS = [
    {"port": "socket://127.0.0.1:1", "device": "gw-1"},
    {"port": "socket://127.0.0.1:2", "device": "gw-2"},
]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFleet]:
    home = tmp_path_factory.mktemp("home")
    with gateway_environment(home):
        yield GatewayFleet(
            home,
            DEVICES,
            listeners=[{"port": 8883}, {"port": 8884, "auth": "certificate+password"}],
        )


def test_image_holds_every_file_of_the_contract(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS)
    image = build_device_image(ctx, "gw-1")
    assert image.layout.name == "4M2M" and len(image.data) == 0x1FA000
    files = read_littlefs_image(image.data, flash_layout("4M2M"))
    assert set(files) == {CONFIG_FILE, CA_FILE, CERT_FILE, KEY_FILE, WIFI_PASS_FILE}
    config = json.loads(files[CONFIG_FILE])
    assert config["device_id"] == "gw-1"
    assert config["wifi_ssid"] == "unit-wifi"
    assert config["mqtt_hosts"] == ["localhost"] and config["mqtt_port"] == 8883
    assert config["topics"] == {
        "telemetry": "devices/gw-1/telemetry",
        "status": "devices/gw-1/status",
        "commands": "devices/gw-1/commands",
    }
    assert "mqtt_username" not in config
    assert files[CA_FILE] == ctx.pki.ca_chain_pem()
    assert files[CERT_FILE] == ctx.pki.certificate_pem("gw-1")
    assert files[KEY_FILE] == ctx.pki.private_key_pem("gw-1")
    assert files[WIFI_PASS_FILE] == WIFI_PASSPHRASE.encode()
    record = ctx.pki.record("gw-1")
    assert record is not None and image.cert_serial == record.serial_hex
    # The simulator reads the same contract back.
    bundle = Bundle.from_files(files)
    assert bundle.config.device_id == "gw-1"


def test_device_with_password_gets_username_and_password_file(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS)
    files = read_littlefs_image(build_device_image(ctx, "gw-2").data, flash_layout("4M2M"))
    assert json.loads(files[CONFIG_FILE])["mqtt_username"] == "gw-2"
    assert files[MQTT_PASS_FILE] == ctx.passwords["gw-2"].get_secret_value().encode()


def test_same_inputs_same_bytes(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS)
    assert build_device_image(ctx, "gw-1").data == build_device_image(ctx, "gw-1").data


def test_image_has_the_core_geometry(gateways: GatewayFleet) -> None:
    layout = flash_layout("4M2M")
    image = build_device_image(gateways.context(BOARDS), "gw-1")
    fs = LittleFS(
        context=UserContext(buffer=bytearray(image.data)), mount=False, **core_geometry(layout)
    )
    fs.mount()
    stat = fs.fs_stat()
    assert (stat.block_size, stat.block_count) == (8192, 253)
    assert stat.name_max == 32
    assert stat.disk_version == 0x00020000


def test_littlefs_python_defaults_are_refused_like_the_board_would() -> None:
    """An image made with littlefs-python's defaults (format 2.1, 255-byte names) does not
    mount with the core's geometry: the board would format it and lose the secrets."""
    layout = flash_layout("4M2M")
    context = UserContext(buffsize=layout.fs_size)
    fs = LittleFS(context=context, block_size=8192, block_count=253)  # library defaults
    with fs.open("/iotfleet.json", "wb") as handle:
        handle.write(b"{}")
    fs.unmount()
    with pytest.raises(FilesystemError, match="would format the partition"):
        read_littlefs_image(bytes(context.buffer), layout)


def test_layouts_match_the_esp8266_core() -> None:
    expected = {
        "4M2M": (0x200000, 0x1FA000, 8192),
        "4M1M": (0x300000, 0xFA000, 8192),
        "4M3M": (0x100000, 0x2FA000, 8192),
        "2M1M": (0x100000, 0xFA000, 8192),
        "1M64": (0xEB000, 0x10000, 4096),
    }
    for name, (offset, size, block) in expected.items():
        layout = LAYOUTS[name]
        assert (layout.fs_offset, layout.fs_size, layout.block_size) == (offset, size, block)
        # The last 20 KB (EEPROM, RF calibration, Wi-Fi settings) stay outside.
        assert layout.fs_end <= layout.flash_size - 20 * 1024
    assert flash_layout("4m1m").name == "4M1M"


def test_unknown_layout_is_a_clear_error(gateways: GatewayFleet) -> None:
    with pytest.raises(UnknownLayoutError, match=r"unknown flash layout '4M9M'.*4M2M"):
        flash_layout("4M9M")
    boards = [dict(BOARDS[0], layout="4M9M")]
    with pytest.raises(DeviceImageError) as caught:
        build_device_image(gateways.context(boards), "gw-1")
    assert str(caught.value).startswith("host @local: espgw_boards[0].layout: unknown flash layout")


@pytest.mark.parametrize("length", [7, 64])
def test_wifi_passphrase_outside_8_to_63_is_refused_without_echo(
    gateways: GatewayFleet, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    secret = "s3cr3t-" + "x" * (length - 7)
    monkeypatch.setenv(WIFI_ENV, secret)
    with pytest.raises(DeviceImageError) as caught:
        build_device_image(gateways.context(BOARDS), "gw-1")
    message = str(caught.value)
    assert message.startswith("host @local: espgw_wifi_passphrase: a Wi-Fi passphrase has 8..63")
    assert f"has {length}" in message
    assert secret not in message and secret not in repr(caught.value)


def test_generated_wifi_passphrase_is_kept_per_network(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS, wifi_passphrase="generated")
    files = read_littlefs_image(build_device_image(ctx, "gw-1").data, flash_layout("4M2M"))
    kept = ctx.secrets.generated(wifi_passphrase_slot("unit-wifi"))
    assert files[WIFI_PASS_FILE].decode() == kept
    assert 8 <= len(files[WIFI_PASS_FILE]) <= 63


def test_secrets_larger_than_the_partition(
    gateways: GatewayFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real secrets fit even the core's smallest layout (512K32), so the device-level path is
    # shown with a partition of 3 blocks of 4 KB (superblock pair + one file).
    monkeypatch.setitem(LAYOUTS, "TINY", FlashLayout("TINY", 0x80000, 0x70000, 0x3000, 4096))
    boards = [dict(BOARDS[0], layout="TINY")]
    with pytest.raises(DeviceImageError) as caught:
        build_device_image(gateways.context(boards), "gw-1")
    assert str(caught.value).startswith("device gw-1: secrets: ")
    assert "do not fit the TINY filesystem (3 blocks of 4096 bytes)" in str(caught.value)
    assert WIFI_PASSPHRASE not in str(caught.value)
    # The core's smallest layout still holds a device's secrets.
    build_device_image(gateways.context([dict(BOARDS[0], layout="512K32")]), "gw-1")
    with pytest.raises(FilesystemError, match="do not fit"):
        build_littlefs_image({"/big.bin": b"x" * 0x20000}, flash_layout("1M64"))


def test_revoked_device_and_unknown_device(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS)
    with pytest.raises(DeviceImageError, match="device gw-old: revoked: the device is revoked"):
        device_bundle(ctx, "gw-old", station=ctx.fleet.stations[0])
    with pytest.raises(DeviceImageError, match="device nope: device: not in fleet_devices"):
        device_bundle(ctx, "nope", station=ctx.fleet.stations[0])


def test_broker_port_without_tls_listener(gateways: GatewayFleet) -> None:
    with pytest.raises(
        DeviceImageError, match="espgw_broker_port: broker localhost has no TLS listener on 9999"
    ):
        build_device_image(gateways.context(BOARDS, broker_port=9999), "gw-1")
    with pytest.raises(DeviceImageError, match="device gw-1: password: listener 8884"):
        build_device_image(gateways.context(BOARDS, broker_port=8884), "gw-1")


def test_bundle_repr_shows_no_secret(gateways: GatewayFleet) -> None:
    ctx = gateways.context(BOARDS)
    bundle = device_bundle(ctx, "gw-2")
    text = repr(bundle) + repr(build_device_image(ctx, "gw-2"))
    assert WIFI_PASSPHRASE not in text
    assert ctx.passwords["gw-2"].get_secret_value() not in text
    assert "PRIVATE KEY" not in text


def test_reference_firmware_is_a_valid_esp8266_image(tmp_path: Path) -> None:
    image = tmp_path / "fw.bin"
    image.write_bytes(reference_firmware())
    shown = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(image)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Detected image type: ESP8266" in shown.stdout
    assert "(valid)" in shown.stdout
    # The default firmware of espgw_firmware is exactly what the generator makes.
    assert (REPO / "files/firmware/iotfleet-gateway.bin").read_bytes() == reference_firmware()
    assert reference_firmware() == reference_firmware()


def test_two_boards_on_one_port_are_an_inventory_error(gateways: GatewayFleet) -> None:
    from iotfleet.model import InventoryError

    same_port = [dict(BOARDS[0]), dict(BOARDS[1], port=BOARDS[0]["port"])]
    with pytest.raises(InventoryError) as caught:
        gateways.context(same_port)
    assert (
        "host @local: espgw_boards[1].port: socket://127.0.0.1:1 is also espgw_boards[0]'s port"
    ) in str(caught.value)


def test_lab_board_entries_are_accepted(gateways: GatewayFleet) -> None:
    """The lab's inventory adds flash_file and an upper-case MAC to each board."""
    boards = [dict(BOARDS[0], flash_file="/srv/lab/gw1.flash", mac="18:FE:34:00:00:01")]
    board = gateways.context(boards).fleet.stations[0].boards[0]
    assert str(board.flash_file) == "/srv/lab/gw1.flash" and board.mac == "18:fe:34:00:00:01"


SKETCH = REPO / "files/firmware/iotfleet-gateway/src/main.cpp"


def test_the_inventorys_ntp_servers_are_what_the_board_reads(gateways: GatewayFleet) -> None:
    from iotfleet.model.settings import DEFAULT_NTP_SERVERS

    servers = ["ntp1.plant.example", "10.20.0.1", "fd00::123"]
    image = build_device_image(gateways.context(BOARDS, ntp_servers=servers), "gw-1")
    files = read_littlefs_image(image.data, flash_layout("4M2M"))
    assert json.loads(files[CONFIG_FILE])["ntp_servers"] == servers  # the key the sketch reads
    assert Bundle.from_files(files).config.ntp_servers == servers  # and the simulator
    default = build_device_image(gateways.context(BOARDS), "gw-1")
    files = read_littlefs_image(default.data, flash_layout("4M2M"))
    assert json.loads(files[CONFIG_FILE])["ntp_servers"] == list(DEFAULT_NTP_SERVERS)


@pytest.mark.parametrize(
    ("servers", "why"),
    [
        ([], "at least 1 item"),
        (["a.example", "b.example", "c.example", "d.example"], "at most 3 items"),
        (["not a host!"], "'not a host!' is neither an IP address nor a host name"),
        (["ntp://time.example"], "is neither an IP address nor a host name"),
        (["10.0.0.300"], "'10.0.0.300' is neither an IP address nor a host name"),
        ([""], "is neither an IP address nor a host name"),
        ("pool.ntp.org", "valid list"),
    ],
)
def test_bad_ntp_servers_are_refused_naming_the_key(
    gateways: GatewayFleet, servers: object, why: str
) -> None:
    from iotfleet.model import InventoryError

    with pytest.raises(InventoryError) as caught:
        gateways.context(BOARDS, ntp_servers=servers)
    assert "host @local: espgw_ntp_servers: " in str(caught.value) and why in str(caught.value)


def test_the_sketch_reads_every_key_of_the_configuration() -> None:
    """The reference sketch cannot be compiled here: at least its /iotfleet.json keys and its
    NTP slots are tied to the contract."""
    from iotfleet.device.contract import GatewayConfig
    from iotfleet.model.settings import MAX_NTP_SERVERS

    source = SKETCH.read_text()
    missing = [key for key in GatewayConfig.model_fields if f'doc["{key}"]' not in source]
    assert missing == []
    assert f"String ntp[{MAX_NTP_SERVERS}];" in source
    assert f"config.ntpCount < {MAX_NTP_SERVERS}" in source


def test_a_plan_holds_every_secret_the_gateways_images_are_built_with(
    gateways: GatewayFleet,
) -> None:
    # A generated Wi-Fi passphrase first made while an image was built came after pyinfra's
    # hosts were told "nothing to commit": it was never kept, so each run made a new one and
    # reflashed every gateway.
    loaded = gateways.context(BOARDS, wifi_passphrase="generated", wifi_ssid="planned-wifi")
    stage = Stage()
    ctx = FleetContext.for_fleet(loaded.fleet, stage=stage)
    slot_path = ctx.secrets.slot_path(wifi_passphrase_slot("planned-wifi"))
    rendering_secrets(ctx)
    planned = stage.changed_paths()
    assert slot_path in planned and not slot_path.exists()
    for board_entry in BOARDS:
        build_device_image(ctx, board_entry["device"])
    assert stage.changed_paths() == planned, "an image made a secret the plan did not hold"


def test_a_plan_makes_no_wifi_secret_for_a_passphrase_given_by_reference(
    gateways: GatewayFleet,
) -> None:
    loaded = gateways.context(BOARDS, wifi_ssid="referenced-wifi")
    stage = Stage()
    ctx = FleetContext.for_fleet(loaded.fleet, stage=stage)
    rendering_secrets(ctx)
    slot_path = ctx.secrets.slot_path(wifi_passphrase_slot("referenced-wifi"))
    assert slot_path not in stage.changed_paths()
