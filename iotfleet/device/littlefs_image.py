"""LittleFS images with the exact geometry of the ESP8266 Arduino core's ``LittleFS``.

The core mounts with read/prog/cache/lookahead sizes of 64, names of at most 32 bytes, 16 block
cycles and on-disk format 2.0; a filesystem made with littlefs-python's defaults (255-byte
names, format 2.1) fails that mount, and the core then *formats* the partition: the secrets are
gone. So images are always built, and read back, with ``core_geometry``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iotfleet.device.layouts import FlashLayout

CORE_IO_SIZE = 64  # read_size = prog_size = cache_size = lookahead_size in the core
CORE_NAME_MAX = 32
CORE_BLOCK_CYCLES = 16
CORE_DISK_VERSION = 0x00020000  # littlefs on-disk format 2.0


class FilesystemError(ValueError):
    """An image that cannot be made, or that the board would not mount."""


def _littlefs() -> Any:
    """littlefs-python, imported when an image is made or read: only gateways need it (the
    ``[flash]`` extra), and a broker rollout reaches this package through the file contract."""
    try:
        import littlefs
    except ImportError:
        raise FilesystemError(
            "gateway images need littlefs-python: pip install 'iotfleet[flash]'"
        ) from None
    return littlefs


def core_geometry(layout: FlashLayout) -> dict[str, Any]:
    """littlefs configuration the core uses for ``layout``'s partition."""
    return {
        "block_size": layout.block_size,
        "block_count": layout.block_count,
        "read_size": CORE_IO_SIZE,
        "prog_size": CORE_IO_SIZE,
        "cache_size": CORE_IO_SIZE,
        "lookahead_size": CORE_IO_SIZE,
        "name_max": CORE_NAME_MAX,
        "block_cycles": CORE_BLOCK_CYCLES,
        "disk_version": CORE_DISK_VERSION,
    }


def build_littlefs_image(files: Mapping[str, bytes], layout: FlashLayout) -> bytes:
    """A freshly formatted partition image holding ``files`` (``/name`` -> content).

    Deterministic: the same files give the same bytes, so an unchanged device is not reflashed.
    Raises ``FilesystemError`` when a name is too long or the files do not fit.
    """
    for path in files:
        for part in path.strip("/").split("/"):
            if not part or len(part.encode()) > CORE_NAME_MAX:
                raise FilesystemError(
                    f"file name {path!r}: each part is 1..{CORE_NAME_MAX} bytes on the board"
                )
    total = sum(len(content) for content in files.values())
    if total > layout.fs_size:
        raise FilesystemError(_too_big(total, layout))
    lfs = _littlefs()
    context = lfs.UserContext(buffsize=layout.fs_size)
    fs = lfs.LittleFS(context=context, mount=False, **core_geometry(layout))
    try:
        fs.format()
        fs.mount()
        for path in sorted(files):
            parent = path.rsplit("/", 1)[0]
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(path, "wb") as handle:
                handle.write(files[path])
        fs.unmount()
    except lfs.LittleFSError as exc:
        if exc.code == lfs.LittleFSError.Error.LFS_ERR_NOSPC:
            raise FilesystemError(_too_big(total, layout)) from None
        raise FilesystemError(f"cannot build the {layout.name} filesystem: {exc}") from None
    return bytes(context.buffer)


def read_littlefs_image(image: bytes, layout: FlashLayout) -> dict[str, bytes]:
    """Every file of a partition image, mounted as the board mounts it (never formatted)."""
    if len(image) != layout.fs_size:
        raise FilesystemError(
            f"the {layout.name} partition is {layout.fs_size} bytes, got {len(image)}"
        )
    lfs = _littlefs()
    context = lfs.UserContext(buffer=bytearray(image))
    fs = lfs.LittleFS(context=context, mount=False, **core_geometry(layout))
    try:
        fs.mount()
    except lfs.LittleFSError as exc:
        raise FilesystemError(
            f"no LittleFS the board can mount at 0x{layout.fs_offset:x} ({layout.name}): {exc}; "
            "the firmware would format the partition and find no secrets"
        ) from None
    try:
        stat = fs.fs_stat()
        if stat.block_count != layout.block_count or stat.block_size != layout.block_size:
            raise FilesystemError(
                f"filesystem has {stat.block_count} blocks of {stat.block_size} bytes, layout "
                f"{layout.name} expects {layout.block_count} of {layout.block_size}"
            )
        files: dict[str, bytes] = {}
        for root, _dirs, names in fs.walk("/"):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                with fs.open(path, "rb") as handle:
                    files[path] = handle.read()
        return files
    finally:
        fs.unmount()


@dataclass(frozen=True)
class Write:
    """Write ``content`` to ``path`` (created or replaced; complete once the file is closed)."""

    path: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class Rename:
    """Rename ``source`` over ``target`` (littlefs renames atomically)."""

    source: str
    target: str


@dataclass(frozen=True)
class Remove:
    """Remove ``path`` if it is there."""

    path: str


FileStep = Write | Rename | Remove


def staged_writes(files: Mapping[str, bytes]) -> list[FileStep]:
    """How the firmware writes each file: to ``<name>.new`` first, then renamed over ``<name>``,
    so a power cut leaves the old file or the new one, never half of one."""
    steps: list[FileStep] = []
    for path, content in files.items():
        steps += [Write(f"{path}.new", content), Rename(f"{path}.new", path)]
    return steps


def littlefs_steps(image: bytes, layout: FlashLayout, steps: Sequence[FileStep]) -> Iterator[bytes]:
    """Apply ``steps`` to a partition image one by one, yielding the partition after each: the
    bytes a board's flash holds if the power goes right after that step."""
    if len(image) != layout.fs_size:
        raise FilesystemError(f"the {layout.name} partition is {layout.fs_size} bytes")
    lfs = _littlefs()
    context = lfs.UserContext(buffer=bytearray(image))
    fs = lfs.LittleFS(context=context, mount=False, **core_geometry(layout))
    try:
        fs.mount()
    except lfs.LittleFSError as exc:
        raise FilesystemError(f"cannot update the {layout.name} filesystem: {exc}") from None
    try:
        for step in steps:
            try:
                _apply(fs, step)
            except lfs.LittleFSError as exc:
                raise FilesystemError(
                    f"cannot update the {layout.name} filesystem ({step}): {exc}"
                ) from None
            yield bytes(context.buffer)
    finally:
        fs.unmount()


def _apply(fs: Any, step: FileStep) -> None:
    if isinstance(step, Write):
        with fs.open(step.path, "wb") as handle:
            handle.write(step.content)
    elif isinstance(step, Rename):
        fs.rename(step.source, step.target)
    else:
        with contextlib.suppress(FileNotFoundError):
            fs.remove(step.path)


def _too_big(total: int, layout: FlashLayout) -> str:
    return (
        f"{total} bytes of files do not fit the {layout.name} filesystem "
        f"({layout.block_count} blocks of {layout.block_size} bytes): "
        "choose a layout with a bigger filesystem"
    )
