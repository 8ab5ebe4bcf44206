"""``iotfleet lab up``: converge a lab to the asked size (base, infrastructure, hosts, boards).
State is saved after each step so that a crash can be cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from iotfleet.lab import naming, network, packages, preflight
from iotfleet.lab.attach import reattach, release
from iotfleet.lab.base import BaseCache, cached_base, ensure_base
from iotfleet.lab.boot import ensure_nspawn_runtime
from iotfleet.lab.down import teardown
from iotfleet.lab.environment import Environment
from iotfleet.lab.errors import LabError
from iotfleet.lab.gateways import free_loopback_port, gateway_running, start_gateway
from iotfleet.lab.hosts import converge_hosts, host_entry, remove_hosts
from iotfleet.lab.hostsfile import update_hosts_file
from iotfleet.lab.identity import ensure_client_key
from iotfleet.lab.leftovers import sweep_leftovers
from iotfleet.lab.network import MAX_SLOT, bridge_address
from iotfleet.lab.procs import is_alive, run, stop_processes
from iotfleet.lab.progress import Reporter, SilentReporter
from iotfleet.lab.repo import REPO_PORT, start_repo_server
from iotfleet.lab.request import UpRequest, wanted_gateways, wanted_hosts
from iotfleet.lab.state import (
    GatewayState,
    LabPaths,
    LabState,
    exclusive_lock,
    lab_paths,
    load_state,
    lock_file,
    other_states,
    save_state,
)


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
                    teardown(name, paths, env, state)
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
            added = converge_hosts(state, paths, request, rep)
            _converge_gateways(state, paths, wanted_gateways(request), rep, env.emulator_argv)
            state.devices = request.devices
            # Hosts restarted above have a new mount namespace: their boards need new bridges.
            for note in reattach(state, paths):
                rep.note(note)
            entries = [host_entry(h) for h in state.hosts]
            update_hosts_file(name, entries, env.hosts_lock, env.hosts_file)
            save_state(paths.state_file, state)
        except BaseException:
            if created:
                teardown(name, paths, env, state, keep_logs=True)
            else:
                remove_hosts(state, paths, added)
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
    if request.devices < 0:
        raise LabError("--devices must be 0 or more")
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
    for other in other_states(name, root):
        if other.tag == tag:
            raise LabError(
                f"lab names {name!r} and {other.name!r} share the short tag {tag}: pick another"
            )


def _new_state(name: str, request: UpRequest, env: Environment, base: BaseCache) -> LabState:
    tag = naming.lab_tag(name)
    subnet = preflight.choose_subnet(
        env.route_text(),
        request.subnet,
        taken=[s.subnet for s in other_states(name, env.root)],
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
