"""Build iotfleet's Mosquitto plugin on the control machine (gcc + Debian's headers).

Built once per process into a temporary directory that is removed at once: loading the deploy
writes nothing to the user's state, and no build artefact lives in git. Without ``-g`` the
output depends only on the source and the toolchain, so a second rollout uploads nothing.
One binary built on Debian 12 serves bookworm (Mosquitto 2.0.11) and trixie (2.0.21) brokers:
plugin API v5, and glibc / OpenSSL 3 are forward compatible.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent / "plugin" / "iotfleet_auth.c"
HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "openssl/evp.h")
PACKAGES = "gcc libmosquitto-dev mosquitto-dev libssl-dev"
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=default")


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here; the message says which packages are missing."""


@functools.cache
def auth_plugin() -> bytes:
    """The compiled plugin (``iotfleet_auth.so``)."""
    gcc = shutil.which("gcc")
    missing = [h for h in HEADERS if not any(Path(d, h).exists() for d in _include_dirs())]
    if gcc is None or missing:
        what = "gcc" if gcc is None else ", ".join(missing)
        raise PluginBuildError(
            f"cannot build iotfleet's Mosquitto plugin: {what} not found on the control "
            f"machine; install {PACKAGES} (scripts/install-system-deps.sh)"
        )
    with tempfile.TemporaryDirectory(prefix="iotfleet-plugin-") as work:
        out = Path(work, "iotfleet_auth.so")
        result = subprocess.run(
            [gcc, *CFLAGS, "-o", str(out), str(SOURCE), "-lcrypto"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PluginBuildError(
                f"building iotfleet's Mosquitto plugin failed:\n{result.stderr.strip()}"
            )
        return out.read_bytes()


def _include_dirs() -> tuple[str, ...]:
    return ("/usr/include", "/usr/local/include")
