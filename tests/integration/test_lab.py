"""The lab from a user's side: real hosts, real pyinfra, clean convergence and teardown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from iotfleet.lab.down import down
from iotfleet.lab.environment import Environment
from iotfleet.lab.errors import LabError
from iotfleet.lab.naming import lab_tag
from iotfleet.lab.request import UpRequest
from iotfleet.lab.state import ProcessRef, lab_paths, load_state
from iotfleet.lab.up import up
from tests.integration.conftest import (
    PYINFRA,
    REPO,
    LabFactory,
    RunningLab,
    iotfleet,
    read_lab,
    require_root,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def bookworm(lab_factory: LabFactory) -> RunningLab:
    return lab_factory(suite="bookworm", brokers=2)


def test_systemd_is_pid1_and_the_system_is_running(bookworm: RunningLab) -> None:
    for host in bookworm.hosts:
        out = bookworm.ssh(host, "ps -p 1 -o comm=; systemctl is-system-running").stdout
        assert out.split() == ["systemd", "running"], f"{host.name}: {out}"


def test_hosts_have_their_own_identity(bookworm: RunningLab) -> None:
    seen: dict[str, set[str]] = {k: set() for k in ("hostname", "fqdn", "machine-id", "key")}
    command = "hostname; hostname -f; cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub"
    for host in bookworm.hosts:
        name, fqdn, machine_id, key = bookworm.ssh(host, command).stdout.splitlines()
        assert (name, fqdn) == (host.name, host.fqdn)
        seen["hostname"].add(name)
        seen["fqdn"].add(fqdn)
        seen["machine-id"].add(machine_id)
        seen["key"].add(" ".join(key.split()[:2]))
        # The key the host serves is the one in the lab's known_hosts (strict checking works).
        assert " ".join(key.split()[:2]) in bookworm.known_hosts.read_text()
    assert all(len(values) == len(bookworm.hosts) for values in seen.values()), seen
    addresses = {h.address for h in bookworm.hosts}
    assert len(addresses) == len(bookworm.hosts)


def test_host_reaches_another_host_over_the_bridge(bookworm: RunningLab) -> None:
    a, b = bookworm.hosts[:2]
    # The lab's own network: an earlier module's rollout may have put iotfleet's firewall on
    # b, which admits SSH from the control machine only (the next rollout puts it back).
    bookworm.ssh(b, "nft delete table inet iotfleet 2>/dev/null; true")
    out = bookworm.ssh(
        a, f"getent hosts {b.fqdn}; timeout 5 bash -c 'head -c 4 </dev/tcp/{b.fqdn}/22'"
    ).stdout
    assert b.address in out and "SSH-" in out


def test_control_machine_resolves_the_fqdns(bookworm: RunningLab) -> None:
    for host in bookworm.hosts:
        assert socket.gethostbyname(host.fqdn) == host.address


def test_apt_installs_from_the_labs_own_source(bookworm: RunningLab) -> None:
    host = bookworm.hosts[0]
    out = bookworm.ssh(
        host,
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v '^#'; "
        "apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello >/dev/null && hello",
        timeout=300,
    ).stdout.splitlines()
    sources = [line for line in out if line.startswith("deb")]
    assert sources == [f"deb [trusted=yes] http://{_bridge(bookworm)}:8642/ ./"]
    assert out[-1] == "Hello, world!"


def test_firewall_capability(bookworm: RunningLab) -> None:
    """A host manages its own nftables (CAP_NET_ADMIN), like a real server."""
    host = bookworm.hosts[-1]
    out = bookworm.ssh(
        host,
        "apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null && "
        "nft add table inet itest && nft list tables && nft delete table inet itest",
        timeout=300,
    ).stdout
    assert "table inet itest" in out


def _grand_total(output: str) -> dict[str, str]:
    """Parse pyinfra's 'Grand total  HOSTS  SUCCESS  ERROR  NO-CHANGE' results line."""
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert match, output
    return dict(zip(("hosts", "success", "error", "no_change"), match.groups(), strict=True))


def test_real_pyinfra_changes_once_then_reports_no_change(bookworm: RunningLab) -> None:
    path = f"/srv/itest-{uuid.uuid4().hex[:8]}"
    # The brokers only: a lab with boards also lists the control machine (@local).
    argv = [
        PYINFRA,
        "-y",
        "--limit",
        "brokers",
        str(bookworm.inventory),
        "files.directory",
        f"path={path}",
        "mode=750",
    ]

    def deploy() -> dict[str, str]:
        result = subprocess.run(
            argv, env=bookworm.env(), capture_output=True, text=True, timeout=300, cwd=REPO
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return _grand_total(result.stdout + result.stderr)

    first = deploy()
    brokers = str(len(bookworm.hosts))  # the shared lab: as many as a module asked for
    assert first == {"hosts": brokers, "success": brokers, "error": "-", "no_change": "-"}
    for host in bookworm.hosts:
        assert bookworm.ssh(host, f"stat -c %a {path}").stdout.strip() == "750"
    second = deploy()
    assert second == {"hosts": brokers, "success": "-", "error": "-", "no_change": brokers}


def test_status_probes_every_host(bookworm: RunningLab) -> None:
    result = iotfleet("lab", "status", "--name", bookworm.name)
    assert result.returncode == 0, result.stderr
    for host in bookworm.hosts:
        row = next(line for line in result.stdout.splitlines() if f" {host.name} " in line)
        assert host.address in row and "bookworm" in row and "running" in row


def test_trixie_lab_installs_mosquitto_from_its_source(lab_factory: LabFactory) -> None:
    lab = lab_factory(suite="trixie", brokers=1)
    host = lab.hosts[0]
    out = lab.ssh(
        host,
        "grep -h VERSION_CODENAME /etc/os-release; systemctl is-system-running; "
        "apt-get update -q >/dev/null && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >/dev/null && "
        "dpkg-query -W -f '${Version}\\n' mosquitto && systemctl is-active mosquitto",
        timeout=300,
    ).stdout.split()
    assert out[0] == "VERSION_CODENAME=trixie"
    assert out[1] == "running"
    assert out[2].startswith("2.0.")
    assert out[3] == "active"


# --- lifecycle: a lab of its own, so the shared labs above are not disturbed ---------------


def _leftovers(name: str) -> list[str]:
    tag = lab_tag(name)
    found = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    found += [line for line in links.stdout.splitlines() if f"iof{tag}" in line]
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [p.name for p in netns.iterdir() if p.name.startswith(f"iof-{tag}-")]
    lab_dir = str(lab_paths(name).root)
    found += [m for m in Path("/proc/self/mounts").read_text().splitlines() if lab_dir in m]
    hosts = Path("/etc/hosts").read_text().splitlines()
    found += [line for line in hosts if f"iotfleet lab {name}" in line]
    return found


def _gone(pid: int) -> bool:
    """The process ended (a zombie not yet reaped by PID 1 counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _nspawn_pids(name: str) -> list[int]:
    state = load_state(lab_paths(name).state_file)
    assert state is not None
    return [h.process.pid for h in state.hosts if h.process]


def test_up_converges_recovers_and_down_leaves_nothing() -> None:
    require_root()
    name = "itest-converge"
    try:
        one = _up(name, 1)
        assert [h.name for h in one.hosts] == ["broker1"]
        two = _up(name, 2)
        assert [h.name for h in two.hosts] == ["broker1", "broker2"]
        assert two.host("broker1") == one.host("broker1")  # kept, not rebuilt
        again = _up(name, 2)  # nothing to do: same hosts, same processes
        assert again.hosts == two.hosts
        pids = _nspawn_pids(name)
        assert len(set(pids)) == 2

        # A crashed host (its nspawn killed) is found dead by status and restarted by up.
        os.kill(pids[1], signal.SIGKILL)
        status = iotfleet("lab", "status", "--name", name)
        assert status.returncode == 3 and "stopped" in status.stdout
        _up(name, 2)
        assert iotfleet("lab", "status", "--name", name).returncode == 0
        two.ssh("broker2", "systemctl is-system-running --wait")

        back = _up(name, 1)
        assert [h.name for h in back.hosts] == ["broker1"]
        assert "broker2" not in Path("/etc/hosts").read_text().split(f"lab {name}")[1]
        remaining = _nspawn_pids(name)
        assert remaining == pids[:1]
        everything = remaining + [p.pid for p in _repo_server(name)]
    finally:
        down_result = iotfleet("lab", "down", "--name", name)
    assert down_result.returncode == 0, down_result.stderr
    assert _leftovers(name) == []
    assert not lab_paths(name).root.exists()
    assert all(_gone(pid) for pid in everything)
    down_again = iotfleet("lab", "down", "--name", name)  # safe twice
    assert down_again.returncode == 0 and "nothing to do" in down_again.stderr


def _up(name: str, brokers: int) -> RunningLab:
    result = iotfleet("lab", "up", "--name", name, "--brokers", str(brokers))
    assert result.returncode == 0, result.stderr
    lab = read_lab(name)
    assert len({h.address for h in lab.hosts}) == len(lab.hosts) == brokers
    return lab


def _repo_server(name: str) -> list[ProcessRef]:
    state = load_state(lab_paths(name).state_file)
    assert state is not None
    return [state.repo_server] if state.repo_server else []


def _bridge(lab: RunningLab) -> str:
    state = load_state(lab_paths(lab.name).state_file)
    assert state is not None
    return state.bridge_address


# --- gateways: the emulator is a colleague's; a stand-in serves the same contract -----------

STAND_IN = textwrap.dedent(
    """
    import argparse, signal, socket, sys
    p = argparse.ArgumentParser()
    p.add_argument("--listen"); p.add_argument("--flash"); p.add_argument("--mac")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    open(a.flash, "ab").close()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port))); s.listen()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        c, _ = s.accept(); c.sendall(a.mac.encode() + b"\\n"); c.close()
    """
)


def test_gateways_start_record_and_stop(tmp_path: Path) -> None:
    require_root()
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    env = Environment(
        find_spec=lambda name: object(),
        emulator_argv=lambda port, flash, mac: [
            sys.executable, str(script), "--listen", f"127.0.0.1:{port}", "--flash", flash,
            "--mac", mac,
        ],
    )  # fmt: skip
    name = "itest-gateways"
    try:
        state = up(UpRequest(name=name, brokers=0, gateways=2), env=env)
        assert [g.name for g in state.gateways] == ["gw1", "gw2"]
        for gw in state.gateways:
            assert gw.mac.startswith("18:FE:34:")
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as conn:
                assert conn.recv(64).decode().strip() == gw.mac
            assert Path(gw.flash_file).is_file()
        lab = read_lab(name)
        groups = subprocess.run(
            [sys.executable, "-c", "import runpy; g = runpy.run_path('inventory/lab.py');"
             "print([b['device'] for b in g['flash_stations'][0][1]['espgw_boards']])"],
            env=lab.env(), capture_output=True, text=True, cwd=REPO, check=True, timeout=60,
        )  # fmt: skip
        assert groups.stdout.strip() == "['gw1', 'gw2']"
        fewer = up(UpRequest(name=name, brokers=0, gateways=1), env=env)
        assert [g.name for g in fewer.gateways] == ["gw1"]
        pids = [g.process.pid for g in fewer.gateways if g.process]
    finally:
        down(name)
    assert all(_gone(pid) for pid in pids)
    assert _leftovers(name) == []


def test_gateways_without_emulator_fail_before_anything_is_made() -> None:
    require_root()
    with pytest.raises(LabError, match=r"iotfleet\.emulator"):
        up(
            UpRequest(name="itest-noemu", brokers=1, gateways=1),
            env=Environment(find_spec=lambda name: None),
        )
    assert not lab_paths("itest-noemu").root.exists()
    assert _leftovers("itest-noemu") == []
