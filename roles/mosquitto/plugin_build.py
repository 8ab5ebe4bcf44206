"""Build iotfleet's Mosquitto plugin on the control machine (gcc + Debian's headers).

Built once per process into a temporary directory that is removed once the binary is read
(or when the process ends): loading the deploy writes nothing to the user's state, and no
build artefact lives in git. A rollout starts gcc as soon as its fleet is validated
(``start_auth_plugin_build``), so the compiler runs on another core while the run plans its
PKI, instead of adding its 0.7 s to every run. Without ``-g`` the
output depends only on the source and the toolchain, so a second rollout uploads nothing.
One binary built on Debian 12 serves bookworm (Mosquitto 2.0.11) and trixie (2.0.21) brokers:
plugin API v5, and glibc / OpenSSL 3 are forward compatible.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

SOURCE = Path(__file__).parent / "plugin" / "iotfleet_auth.c"
HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "openssl/evp.h")
PACKAGES = "gcc libmosquitto-dev mosquitto-dev libssl-dev"
BUILD_TIMEOUT = 300  # seconds; the build takes about one
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=default")


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here; the message says which packages are missing."""


class _Build:
    """gcc compiling the plugin in the background, into a directory of its own."""

    def __init__(self, gcc: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="iotfleet-plugin-"))
        self.out = self.work / "iotfleet_auth.so"
        self.process = subprocess.Popen(
            [gcc, *CFLAGS, "-o", str(self.out), str(SOURCE), "-lcrypto"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # gcc's own temporary files (cc1's assembly, as' objects) go in this directory
            # too, and its whole process group can be stopped: nothing is left anywhere. Only
            # what the compiler needs of the environment (never a passphrase variable).
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LC_ALL": "C",
                "TMPDIR": str(self.work),
            },
            start_new_session=True,
        )
        # Whatever happens to the run (refused, interrupted), the directory goes at exit.
        self.cleanup = weakref.finalize(self, _remove, self.process, self.work)

    def result(self) -> bytes:
        try:
            try:
                _, stderr = self.process.communicate(timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise PluginBuildError(
                    f"building iotfleet's Mosquitto plugin took over {BUILD_TIMEOUT} s: gcc "
                    "was stopped"
                ) from None
            if self.process.returncode != 0:
                raise PluginBuildError(
                    f"building iotfleet's Mosquitto plugin failed:\n{stderr.strip()}"
                )
            return self.out.read_bytes()
        finally:
            self.cleanup()


def _remove(process: subprocess.Popen[str], work: Path) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # gcc and the cc1, as, ld it started
        process.wait()
    for _ in range(100):  # until the last of the group is gone (SIGKILL is not instant)
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.01)
    shutil.rmtree(work, ignore_errors=True)


_started: list[_Build] = []


def _toolchain() -> str:
    """gcc's path; raises naming what is missing to build the plugin here."""
    gcc = shutil.which("gcc")
    missing = [h for h in HEADERS if not any(Path(d, h).exists() for d in _include_dirs())]
    if gcc is None or missing:
        what = "gcc" if gcc is None else ", ".join(missing)
        raise PluginBuildError(
            f"cannot build iotfleet's Mosquitto plugin: {what} not found on the control "
            f"machine; install {PACKAGES} (scripts/install-system-deps.sh)"
        )
    return gcc


def start_auth_plugin_build() -> None:
    """Start compiling the plugin now (once per process); ``auth_plugin`` collects it. A
    toolchain problem is left for ``auth_plugin`` to report, where the run needs the plugin."""
    if _started or _built_plugin.cache_info().currsize:
        return
    try:
        _started.append(_Build(_toolchain()))
    except (PluginBuildError, OSError):
        return


# pyinfra loads its hosts' deploy files in greenlets: while one waits for gcc, the others
# must wait for the same build, not start one each (20 brokers made 20 builds).
_build_lock = threading.Lock()


def auth_plugin() -> bytes:
    """The compiled plugin (``iotfleet_auth.so``), built once per process."""
    with _build_lock:
        return _built_plugin()


@functools.cache
def _built_plugin() -> bytes:
    build = _started.pop() if _started else _Build(_toolchain())
    return build.result()


def _include_dirs() -> tuple[str, ...]:
    return ("/usr/include", "/usr/local/include")
