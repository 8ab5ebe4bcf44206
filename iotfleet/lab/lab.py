"""Orchestration: ``up`` converges a lab to the asked size, ``down`` removes all it made,
``status`` probes what runs. State is saved after each step so a crash can be cleaned up."""

from __future__ import annotations

import ipaddress
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from iotfleet.fleet.paths import state_root
from iotfleet.lab import naming, network, packages, preflight
from iotfleet.lab.attach import bridge_state, reattach, release, release_hosts, stop_bridges
from iotfleet.lab.base import BaseCache, cached_base, ensure_base
from iotfleet.lab.boot import (
    SshAccess,
    boot_host,
    ensure_inotify_instances,
    ensure_nspawn_runtime,
    mount_overlay,
    stop_host_process,
    unmount,
)
from iotfleet.lab.errors import LabError
from iotfleet.lab.gateways import (
    emulator_argv,
    free_loopback_port,
    gateway_running,
    start_gateway,
)
from iotfleet.lab.hostsfile import ETC_HOSTS, update_hosts_file
from iotfleet.lab.identity import (
    HostEntry,
    ensure_client_key,
    known_hosts_text,
    new_ed25519,
    new_machine_id,
    update_etc_hosts,
    write_identity,
)
from iotfleet.lab.mirror import machine_mirror
from iotfleet.lab.procs import is_alive, kill_pids, pids_in_netns, run, stop_processes
from iotfleet.lab.progress import Reporter, SilentReporter
from iotfleet.lab.repo import REPO_PORT, repo_url, start_repo_server
from iotfleet.lab.state import (
    GatewayState,
    HostState,
    LabPaths,
    LabState,
    ProcessRef,
    exclusive_lock,
    lab_paths,
    labs_root,
    load_state,
    lock_file,
    save_state,
    write_atomic,
)

MAX_SLOT = 240  # host addresses are .11 .. .250 of the lab's /24


@dataclass(frozen=True)
class NamedGateway:
    name: str
    mac: str


@dataclass(frozen=True)
class UpRequest:
    """What ``iotfleet lab up`` was asked for."""

    name: str
    brokers: int = 1
    gateways: int = 0
    # Boards named (and with MACs) as given instead of gw1..gwN: a classroom names them after
    # its devices.
    named_gateways: tuple[NamedGateway, ...] = ()
    # Host names instead of broker1..brokerN (a classroom gives each student a broker).
    host_names: tuple[str, ...] = ()
    suite: str = packages.DEFAULT_SUITE
    subnet: str | None = None
    install_missing: bool = False
    boot_timeout: float | None = None  # per host; default grows with the hosts booting at once


@dataclass(frozen=True)
class HostStatus:
    name: str
    fqdn: str
    address: str
    suite: str
    state: str  # running | no-ssh | stopped


@dataclass(frozen=True)
class GatewayStatus:
    name: str
    port: int
    mac: str
    state: str  # running | not-listening | stopped
    attached: str | None = None  # "HOST:DEVICE" when attached to a lab host
    bridge: str | None = None  # running | stopped | stale, when attached


@dataclass
class Environment:
    """What the lab takes from the machine; tests pass their own."""

    root: Path = field(default_factory=state_root)
    hosts_file: Path = ETC_HOSTS
    euid: int = field(default_factory=os.geteuid)
    path: str | None = None  # $PATH for the tool check
    route_text: Callable[[], str] = network.route_table
    mirror: Callable[[], str] = machine_mirror
    find_spec: Callable[[str], object | None] | None = None
    # argv of one emulated board (port, flash file, MAC); tests pass a stand-in server
    emulator_argv: Callable[[int, str, str], list[str]] = emulator_argv

    @property
    def hosts_lock(self) -> Path:
        return self._machine_lock_dir / "iotfleet-etc-hosts.lock"

    @property
    def network_lock(self) -> Path:
        """Held while a new lab picks its subnet and makes its bridge (labs start at once)."""
        return self._machine_lock_dir / "iotfleet-lab-network.lock"

    @property
    def _machine_lock_dir(self) -> Path:
        # Machine-wide (not per IOTFLEET_HOME): the kernel's routes and /etc/hosts are shared.
        shared = Path("/run/lock")
        return shared if shared.is_dir() else self.root


def host_address(subnet: str, slot: int) -> str:
    return str(ipaddress.IPv4Network(subnet)[10 + slot])


def bridge_address(subnet: str) -> str:
    return str(ipaddress.IPv4Network(subnet)[1])


def host_entry(host: HostState) -> HostEntry:
    return HostEntry(address=host.address, fqdn=host.fqdn, short=host.name)


def ssh_access(paths: LabPaths) -> SshAccess:
    return SshAccess(key=paths.ssh_key, known_hosts=paths.known_hosts)


def default_boot_timeout(booting: int) -> float:
    # Boots share two cores: allow more time when many boot at once.
    return 25.0 + 1.5 * booting


# --------------------------------------------------------------------------- up


def up(
    request: UpRequest, reporter: Reporter | None = None, env: Environment | None = None
) -> LabState:
    """Make the lab match ``request``: build/reuse the base, add or remove hosts and boards."""
    rep = reporter or SilentReporter()
    env = env or Environment()
    name = naming.validate_lab_name(request.name)
    _preflight(request, env)
    paths = lab_paths(name, env.root)
    with exclusive_lock(lock_file(name, env.root), f"lab {name!r}"):
        state = load_state(paths.state_file)
        created = state is None
        if state is not None and state.suite != request.suite:
            raise LabError(
                f"lab {name!r} runs {state.suite}, not {request.suite}: run "
                f"`iotfleet lab down --name {name}` first, or pick another --name"
            )
        if state is None:
            swept = sweep_leftovers(name, paths)
            if swept:
                rep.note(f"cleaned leftovers of an earlier {name!r} lab: {', '.join(swept)}")
        base = cached_base(env.root, request.suite)
        current = len(state.hosts) if state else 0
        preflight.check_disk(
            preflight.free_bytes(env.root),
            preflight.disk_needed(base.is_complete(), max(0, len(wanted_hosts(request)) - current)),
            env.root,
        )
        if state is None:
            with exclusive_lock(env.network_lock, "the lab network setup", timeout=120):
                _check_tag_free(name, env.root)
                state = _new_state(name, request, env, base)
                paths.root.mkdir(parents=True, exist_ok=True)
                paths.root.chmod(0o700)
                save_state(paths.state_file, state)
                try:
                    network.ensure_bridge(state.bridge, state.bridge_address, state.subnet)
                except BaseException:
                    _teardown(name, paths, env, state)
                    raise
        elif request.subnet and request.subnet != state.subnet:
            raise LabError(f"lab {name!r} uses {state.subnet}; down it to change --subnet")
        added: list[str] = []
        try:
            if created:
                ensure_base(env.root, request.suite, env.mirror(), rep)
            # A running lab keeps the base it was built on, even if the package sets changed.
            base = BaseCache(Path(state.base_dir))
            if not base.is_complete():
                raise LabError(
                    f"lab {name!r} was built on {state.base_dir}, which is gone: "
                    f"run `iotfleet lab down --name {name}` and up again"
                )
            _ensure_infrastructure(state, paths, base)
            save_state(paths.state_file, state)
            added = _converge_hosts(state, paths, request, rep)
            _converge_gateways(state, paths, wanted_gateways(request), rep, env.emulator_argv)
            # Hosts restarted above have a new mount namespace: their boards need new bridges.
            for note in reattach(state, paths):
                rep.note(note)
            entries = [host_entry(h) for h in state.hosts]
            update_hosts_file(name, entries, env.hosts_lock, env.hosts_file)
            save_state(paths.state_file, state)
        except BaseException:
            if created:
                _teardown(name, paths, env, state, keep_logs=True)
            else:
                _remove_hosts(state, paths, added)
                save_state(paths.state_file, state)
            raise
    return state


def _preflight(request: UpRequest, env: Environment) -> None:
    preflight.check_root(env.euid)
    if request.suite not in packages.SUITES:
        raise LabError(f"--suite {request.suite}: choose one of {', '.join(packages.SUITES)}")
    if not 0 <= request.brokers <= MAX_SLOT:
        raise LabError(f"--brokers {request.brokers}: choose 0..{MAX_SLOT}")
    if len(request.host_names) > MAX_SLOT:
        raise LabError(f"{len(request.host_names)} hosts: at most {MAX_SLOT}")
    for host_name in request.host_names:
        if not naming.HOST_NAME_RE.match(host_name):
            raise LabError(f"host name {host_name!r}: use a DNS label of at most 40 characters")
    if len(set(request.host_names)) != len(request.host_names):
        raise LabError("host names must be unique")
    if request.gateways < 0:
        raise LabError("--gateways must be 0 or more")
    names = [gw.name for gw in request.named_gateways]
    for gw_name in names:
        if not naming.GATEWAY_NAME_RE.match(gw_name):
            raise LabError(f"gateway name {gw_name!r}: use 1-40 characters a-z A-Z 0-9 . _ -")
    if len(set(names)) != len(names):
        raise LabError("gateway names must be unique")
    preflight.check_tools(env.path, request.install_missing, _apt_install)
    if env.find_spec is None:
        preflight.check_emulator(len(wanted_gateways(request)))
    else:
        preflight.check_emulator(len(wanted_gateways(request)), env.find_spec)


def _apt_install(command: Sequence[str]) -> None:
    run(list(command), timeout=900)


def _check_tag_free(name: str, root: Path) -> None:
    tag = naming.lab_tag(name)
    for other in _other_states(name, root):
        if other.tag == tag:
            raise LabError(
                f"lab names {name!r} and {other.name!r} share the short tag {tag}: pick another"
            )


def _other_states(name: str, root: Path) -> list[LabState]:
    found = []
    labs = labs_root(root)
    if labs.is_dir():
        for entry in labs.iterdir():
            if entry.name == name or not entry.is_dir():
                continue
            try:
                other = load_state(entry / "state.json")
            except LabError:
                continue
            if other is not None:
                found.append(other)
    return found


def _new_state(name: str, request: UpRequest, env: Environment, base: BaseCache) -> LabState:
    tag = naming.lab_tag(name)
    subnet = preflight.choose_subnet(
        env.route_text(),
        request.subnet,
        taken=[s.subnet for s in _other_states(name, env.root)],
    )
    return LabState(
        name=name,
        tag=tag,
        suite=request.suite,
        subnet=str(subnet),
        bridge=naming.bridge_name(tag),
        bridge_address=bridge_address(str(subnet)),
        base_dir=str(base.path),
        repo_port=REPO_PORT,
    )


def _ensure_infrastructure(state: LabState, paths: LabPaths, base: BaseCache) -> None:
    """Bridge, package server, login key: made once, remade if a crash took them."""
    ensure_nspawn_runtime()
    network.ensure_bridge(state.bridge, state.bridge_address, state.subnet)
    if not is_alive(state.repo_server):
        state.repo_server = start_repo_server(
            base.repo, state.bridge_address, state.repo_port, paths.logs_dir / "repo.log"
        )
    ensure_client_key(paths.ssh_key, f"iotfleet-lab-{state.name}")


def wanted_hosts(request: UpRequest) -> list[str]:
    """Host names the lab should have: as given, else broker1..brokerN."""
    if request.host_names:
        return list(request.host_names)
    return [naming.broker_name(i) for i in range(1, request.brokers + 1)]


def _converge_hosts(
    state: LabState, paths: LabPaths, request: UpRequest, rep: Reporter
) -> list[str]:
    wanted = wanted_hosts(request)
    extra = [h.name for h in state.hosts if h.name not in wanted]
    if extra:
        task = rep.task(f"Removing {len(extra)} host(s)", total=None)
        detached = _remove_hosts(state, paths, extra)
        rep.done(task, f"Removed {', '.join(extra)}")
        if detached:
            rep.note(f"detached {', '.join(detached)} (attached to a removed host)")
    added = []
    host_keys: dict[str, bytes] = {}  # private host keys of new hosts, written to their layer
    for host_name in wanted:
        if state.host(host_name) is None:
            host, host_keys[host_name] = _new_host(state, host_name)
            state.hosts.append(host)
            added.append(host_name)
    state.hosts.sort(key=lambda h: h.slot)
    save_state(paths.state_file, state)
    write_atomic(
        paths.known_hosts,
        known_hosts_text([(host_entry(h), h.host_key) for h in state.hosts]),
    )
    to_boot = [h for h in state.hosts if not is_alive(h.process)]
    recovered = [h.name for h in to_boot if h.name not in added]
    if recovered:
        rep.note(f"restarting host(s) that were not running: {', '.join(recovered)}")
    entries = [host_entry(h) for h in state.hosts]
    # Running hosts learn the new neighbours through their /etc/hosts.
    for host in state.hosts:
        if host not in to_boot and (extra or added):
            update_etc_hosts(paths.host_root(host.name), host_entry(host), entries)
    if to_boot:
        # A bridge serves one boot of its host (its mount namespace): stop it before the host
        # is restarted; up attaches the board again afterwards.
        restarting = {h.name for h in to_boot}
        stop_bridges(g for g in state.gateways if g.attachment and g.attachment.host in restarting)
        ensure_inotify_instances(_hosts_on_machine(state, paths))
        _boot_hosts(state, paths, to_boot, host_keys, entries, request, rep)
    return added


def _hosts_on_machine(state: LabState, paths: LabPaths) -> int:
    """Hosts of this lab plus those of the other labs (same state root) running now."""
    others = _other_states(state.name, paths.root.parent.parent)
    return len(state.hosts) + sum(len(o.hosts) for o in others)


def _new_host(state: LabState, host_name: str) -> tuple[HostState, bytes]:
    used = {h.slot for h in state.hosts}
    slot = next(s for s in range(1, MAX_SLOT + 1) if s not in used)
    private, public = new_ed25519(f"root@{host_name}")
    host = HostState(
        name=host_name,
        slot=slot,
        fqdn=naming.fqdn(host_name, state.name),
        address=host_address(state.subnet, slot),
        netns=naming.netns_name(state.tag, host_name),
        veth=naming.veth_name(state.tag, slot),
        machine=naming.machine_name(state.tag, host_name),
        machine_id=new_machine_id(),
        host_key=public,
    )
    return host, private


def _boot_hosts(
    state: LabState,
    paths: LabPaths,
    hosts: list[HostState],
    host_keys: dict[str, bytes],
    entries: list[HostEntry],
    request: UpRequest,
    rep: Reporter,
) -> None:
    """Prepare (network, overlay, identity) and boot ``hosts`` in parallel."""
    lower = Path(state.base_dir) / "rootfs"
    authorized = paths.ssh_key.with_name(paths.ssh_key.name + ".pub").read_text().strip()
    url = repo_url(state.bridge_address, state.repo_port)
    ssh = ssh_access(paths)
    timeout = request.boot_timeout or default_boot_timeout(len(hosts))

    def prepare(host: HostState) -> None:
        # Leftovers of a crash: the recorded process, anything in the namespace, and an
        # nspawn a crashed run started for this host but could not record.
        stop_host_process(host.process, host.netns, timeout=5)
        kill_pids(nspawn_pids_booting(paths.host_root(host.name)))
        host.process = None
        network.create_host_network(host.netns, host.veth, state.bridge, host.address, state.subnet)
        root = mount_overlay(lower, paths.host_dir(host.name))
        if host.name in host_keys:
            write_identity(
                root,
                host_entry(host),
                host.machine_id,
                host_keys[host.name],
                host.host_key,
                authorized,
                entries,
                url,
            )
        else:
            update_etc_hosts(root, host_entry(host), entries)

    saving = threading.Lock()

    def record(host: HostState, process: ProcessRef | None) -> None:
        with saving:
            host.process = process
            save_state(paths.state_file, state)

    def boot(host: HostState) -> tuple[HostState, str, int]:
        result = boot_host(
            paths.host_root(host.name),
            host.machine,
            host.name,
            host.netns,
            host.address,
            ssh,
            paths.logs_dir / f"{host.name}.console.log",
            boot_timeout=timeout,
            on_start=lambda process: record(host, process),
        )
        host.process = result.process
        return host, result.system_state, result.attempts

    workers = max(1, min(len(hosts), 32))
    task = rep.task(f"Preparing {len(hosts)} host(s)", total=len(hosts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for prepared in [pool.submit(prepare, h) for h in hosts]:
            prepared.result()
            rep.advance(task)
    rep.done(task, f"Prepared {len(hosts)} host(s)")
    task = rep.task(f"Booting {len(hosts)} host(s) ({state.suite})", total=len(hosts))
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(boot, h) for h in hosts]
        for future in futures:
            try:
                host, system_state, attempts = future.result()
            except LabError as exc:
                failures.append(str(exc))
                continue
            if attempts > 1:
                rep.note(f"{host.name}: boot stalled, restarted it ({attempts} attempts)")
            if system_state != "running":
                rep.note(f"{host.name}: systemd {system_state}")
            rep.advance(task)
    save_state(paths.state_file, state)
    if failures:
        raise LabError("; ".join(failures))
    rep.done(task, f"Booted {len(hosts)} host(s)")


def _remove_hosts(state: LabState, paths: LabPaths, names: Sequence[str]) -> list[str]:
    """Stop and delete hosts: process, namespace, veth, mount, layer. Gateways attached to
    them are detached first; returns their names."""
    detached = release_hosts(state, names)
    doomed = [h for h in state.hosts if h.name in names]
    _stop_hosts(doomed)
    for host in doomed:
        _destroy_host_runtime(host, paths)
        shutil.rmtree(paths.host_dir(host.name), ignore_errors=True)
    state.hosts = [h for h in state.hosts if h.name not in names]
    if paths.known_hosts.parent.is_dir():
        write_atomic(
            paths.known_hosts,
            known_hosts_text([(host_entry(h), h.host_key) for h in state.hosts]),
        )
    return detached


def _stop_hosts(hosts: Sequence[HostState]) -> None:
    # All at once: each clean poweroff takes ~2 s, in parallel that is ~2 s for any number.
    stop_processes([h.process for h in hosts], timeout=15)
    for host in hosts:
        kill_pids(pids_in_netns(network.NETNS_DIR / host.netns))
        host.process = None


def _destroy_host_runtime(host: HostState, paths: LabPaths) -> None:
    unmount(paths.host_root(host.name))
    network.delete_host_network(host.netns, host.veth)


# --------------------------------------------------------------------- gateways


def wanted_gateways(request: UpRequest) -> dict[str, str]:
    """``{name: MAC}`` of the boards the lab should have: as given, else gw1..gwN."""
    if request.named_gateways:
        return {gw.name: gw.mac for gw in request.named_gateways}
    names = [naming.gateway_name(i) for i in range(1, request.gateways + 1)]
    return {name: naming.gateway_mac(request.name, name) for name in names}


def _converge_gateways(
    state: LabState,
    paths: LabPaths,
    wanted: dict[str, str],
    rep: Reporter,
    argv: Callable[[int, str, str], list[str]],
) -> None:
    count = len(wanted)
    # A board whose MAC changed is a different board: replace it.
    extra = [g for g in state.gateways if wanted.get(g.name, "").upper() != g.mac.upper()]
    release(state, extra)
    stop_processes([g.process for g in extra], timeout=5)
    for old in extra:
        Path(old.flash_file).unlink(missing_ok=True)
    state.gateways = [g for g in state.gateways if g not in extra]
    if not wanted:
        return
    task = rep.task(f"Starting {count} emulated gateway(s)", total=count)
    for gw_name in wanted:
        gw = next((g for g in state.gateways if g.name == gw_name), None)
        if gw is None:
            paths.gateways_dir.mkdir(parents=True, exist_ok=True)
            gw = GatewayState(
                name=gw_name,
                port=free_loopback_port(avoid=[g.port for g in state.gateways]),
                mac=wanted[gw_name].upper(),
                flash_file=str(paths.gateways_dir / f"{gw_name}.flash"),
            )
            state.gateways.append(gw)
        if not gateway_running(gw):
            stop_processes([gw.process], timeout=5)
            gw.process = start_gateway(
                gw, paths.logs_dir / f"{gw_name}.log", argv(gw.port, gw.flash_file, gw.mac)
            )
        save_state(paths.state_file, state)
        rep.advance(task)
    rep.done(task, f"{count} emulated gateway(s) listening")


# ------------------------------------------------------------------------- down


def down(name: str, reporter: Reporter | None = None, env: Environment | None = None) -> bool:
    """Remove everything the lab made. Safe to run twice; False if there was nothing."""
    rep = reporter or SilentReporter()
    env = env or Environment()
    name = naming.validate_lab_name(name)
    preflight.check_root(env.euid)
    paths = lab_paths(name, env.root)
    with exclusive_lock(lock_file(name, env.root), f"lab {name!r}"):
        try:
            state = load_state(paths.state_file)
        except LabError as exc:
            rep.note(f"{exc}; cleaning up by name")
            state = None
        existed = state is not None or paths.root.exists()
        _teardown(name, paths, env, state, rep)
    return existed


def _teardown(
    name: str,
    paths: LabPaths,
    env: Environment,
    state: LabState | None,
    rep: Reporter | None = None,
    keep_logs: bool = False,
) -> None:
    rep = rep or SilentReporter()
    task = rep.task(f"Stopping lab {name!r}", total=None)
    if state is not None:
        # Bridges first: each lives in a host's mount namespace and would keep it alive.
        stop_bridges(state.gateways)
        stop_processes([g.process for g in state.gateways], timeout=5)
        _stop_hosts(state.hosts)
        for host in state.hosts:
            _destroy_host_runtime(host, paths)
        stop_processes([state.repo_server], timeout=5)
        network.delete_link(state.bridge)
    sweep_leftovers(name, paths)
    update_hosts_file(name, [], env.hosts_lock, env.hosts_file)
    if paths.root.exists():
        if keep_logs and paths.logs_dir.is_dir():
            # A failed `up` keeps only its logs, for the error message that points at them.
            for entry in paths.root.iterdir():
                if entry != paths.logs_dir:
                    _remove(entry)
        else:
            shutil.rmtree(paths.root)
    rep.done(task, f"Lab {name!r} is down")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------- status


def load(name: str, root: Path | None = None) -> LabState:
    """The lab's state, or a clear error if there is no such lab."""
    name = naming.validate_lab_name(name)
    state = load_state(lab_paths(name, root).state_file)
    if state is None:
        raise LabError(f"no lab named {name!r}: run `iotfleet lab up --name {name}`")
    return state


def status(
    name: str, root: Path | None = None
) -> tuple[LabState, list[HostStatus], list[GatewayStatus]]:
    """Probe every host (nspawn process alive, sshd answering) and every gateway."""
    state = load(name, root)

    def probe(host: HostState) -> HostStatus:
        if not is_alive(host.process):
            verdict = "stopped"
        else:
            banner = network.tcp_banner(host.address, 22, timeout=2)
            verdict = "running" if banner and banner.startswith(b"SSH-") else "no-ssh"
        return HostStatus(host.name, host.fqdn, host.address, state.suite, verdict)

    with ThreadPoolExecutor(max_workers=max(1, min(len(state.hosts), 32))) as pool:
        hosts = list(pool.map(probe, state.hosts))
    gateways = [
        GatewayStatus(
            g.name,
            g.port,
            g.mac,
            "running"
            if gateway_running(g)
            else ("not-listening" if is_alive(g.process) else "stopped"),
            attached=f"{g.attachment.host}:{g.attachment.device}" if g.attachment else None,
            bridge=bridge_state(state, g),
        )
        for g in state.gateways
    ]
    return state, hosts, gateways
