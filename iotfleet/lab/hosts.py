"""The lab's hosts: add them (slot, address, identity), prepare and boot them in parallel,
stop and remove them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iotfleet.lab import naming, network
from iotfleet.lab.attach import release_hosts, stop_bridges
from iotfleet.lab.boot import (
    SshAccess,
    boot_host,
    ensure_inotify_instances,
    mount_overlay,
    stop_host_process,
    unmount,
)
from iotfleet.lab.errors import LabError
from iotfleet.lab.identity import (
    HostEntry,
    known_hosts_text,
    new_ed25519,
    new_machine_id,
    update_etc_hosts,
    write_identity,
)
from iotfleet.lab.leftovers import nspawn_pids_booting
from iotfleet.lab.network import MAX_SLOT, host_address
from iotfleet.lab.procs import is_alive, kill_pids, pids_in_netns, stop_processes
from iotfleet.lab.progress import Reporter
from iotfleet.lab.repo import repo_url
from iotfleet.lab.request import UpRequest, wanted_hosts
from iotfleet.lab.state import (
    HostState,
    LabPaths,
    LabState,
    ProcessRef,
    other_states,
    save_state,
    write_atomic,
)


def host_entry(host: HostState) -> HostEntry:
    return HostEntry(address=host.address, fqdn=host.fqdn, short=host.name)


def ssh_access(paths: LabPaths) -> SshAccess:
    return SshAccess(key=paths.ssh_key, known_hosts=paths.known_hosts)


def default_boot_timeout(booting: int) -> float:
    # Boots share two cores: allow more time when many boot at once.
    return 25.0 + 1.5 * booting


def converge_hosts(
    state: LabState, paths: LabPaths, request: UpRequest, rep: Reporter
) -> list[str]:
    """Add and remove hosts to match ``request`` and boot those not running; returns those added."""
    wanted = wanted_hosts(request)
    extra = [h.name for h in state.hosts if h.name not in wanted]
    if extra:
        task = rep.task(f"Removing {len(extra)} host(s)", total=None)
        detached = remove_hosts(state, paths, extra)
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
    others = other_states(state.name, paths.root.parent.parent)
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


def remove_hosts(state: LabState, paths: LabPaths, names: Sequence[str]) -> list[str]:
    """Stop and delete hosts: process, namespace, veth, mount, layer. Gateways attached to
    them are detached first; returns their names."""
    detached = release_hosts(state, names)
    doomed = [h for h in state.hosts if h.name in names]
    stop_hosts(doomed)
    for host in doomed:
        destroy_host_runtime(host, paths)
        shutil.rmtree(paths.host_dir(host.name), ignore_errors=True)
    state.hosts = [h for h in state.hosts if h.name not in names]
    if paths.known_hosts.parent.is_dir():
        write_atomic(
            paths.known_hosts,
            known_hosts_text([(host_entry(h), h.host_key) for h in state.hosts]),
        )
    return detached


def stop_hosts(hosts: Sequence[HostState]) -> None:
    """Stop the hosts' processes and whatever is left in their network namespaces."""
    # All at once: each clean poweroff takes ~2 s, in parallel that is ~2 s for any number.
    stop_processes([h.process for h in hosts], timeout=15)
    for host in hosts:
        kill_pids(pids_in_netns(network.NETNS_DIR / host.netns))
        host.process = None


def destroy_host_runtime(host: HostState, paths: LabPaths) -> None:
    """Unmount the host's overlay and delete its namespace and veth (its layer stays)."""
    unmount(paths.host_root(host.name))
    network.delete_host_network(host.netns, host.veth)
