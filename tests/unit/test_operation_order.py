"""The operation order iotfleet gives pyinfra (frames walked, no ``inspect.stack()``) is the
order pyinfra's own ``get_operation_order_from_stack`` computes, call for call; so is the order
of pyinfra with the patch offered upstream (docs/upstream/pyinfra-operation-order-frames.patch)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_type_hints

import pyinfra
import pytest
from pyinfra.api import util

import iotfleet.roles  # noqa: F401 (applies the carried fixes)
from iotfleet.roles.pyinfra_fixes import (
    ORDER_FUNCTION_SOURCE_SHA256,
    operation_order_from_frames,
    order_operations_without_inspect_stack,
    source_digest,
)

Order = Callable[[Any], list[int]]


def _nested(depth: int, order: Order, state: Any) -> list[int]:
    if depth == 0:
        return order(state)
    if depth % 2:
        return _nested(depth - 1, order, state)
    return [*_nested(depth - 1, order, state)]  # another line: positions differ per level


@pytest.mark.parametrize("is_cli", [True, False])
@pytest.mark.parametrize("deploy_file", [__file__, None, "/nowhere/deploy.py"])
@pytest.mark.parametrize("depth", [0, 3, 12])
def test_the_same_order_as_pyinfra_computes(
    is_cli: bool, deploy_file: str | None, depth: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", is_cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    ours, theirs = [  # one line: both are called from the same position
        _nested(depth, order, state)
        for order in (operation_order_from_frames, util.get_operation_order_from_stack)
    ]
    assert ours == theirs
    if deploy_file == __file__:
        assert len(ours) > depth  # the call positions are there, not an empty list twice


def test_two_calls_on_different_lines_are_ordered_as_pyinfra_orders_them() -> None:
    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=0)
    first = _nested(0, operation_order_from_frames, state)
    second = _nested(0, operation_order_from_frames, state)
    assert first < second
    assert _nested(0, util.get_operation_order_from_stack, state) > second


def test_pyinfra_operations_use_the_frame_walk() -> None:
    module = sys.modules["pyinfra.api.operation"]
    assert module.get_operation_order_from_stack is operation_order_from_frames


def test_another_pyinfras_order_function_is_left_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The frame walk replaces only the function it was shown to match (by source digest)."""
    module = sys.modules["pyinfra.api.operation"]
    assert source_digest(util.get_operation_order_from_stack) == ORDER_FUNCTION_SOURCE_SHA256

    def changed_upstream(state: Any) -> list[int]:
        return [0]

    monkeypatch.setattr(module, "get_operation_order_from_stack", changed_upstream)
    order_operations_without_inspect_stack()
    assert module.get_operation_order_from_stack is changed_upstream


REPO = Path(__file__).resolve().parents[2]
PATCH = REPO / "docs" / "upstream" / "pyinfra-operation-order-frames.patch"
INSTALLED = Path(pyinfra.__file__).parent


def _patched_order(directory: Path) -> Order:
    """``get_operation_order_from_stack`` of a copy of pyinfra with the patch applied."""
    shutil.copytree(INSTALLED, directory / "pyinfra")
    subprocess.run(["git", "apply", "-p2", str(PATCH)], cwd=directory, check=True)
    spec = importlib.util.spec_from_file_location(
        "patched_pyinfra_util", directory / "pyinfra" / "api" / "util.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    order: Order = module.get_operation_order_from_stack
    return order


def test_the_patch_is_against_the_releases_own_file() -> None:
    record = importlib.metadata.distribution("pyinfra").read_text("RECORD") or ""
    wheel_hash = next(
        line.split(",")[1] for line in record.splitlines()
        if line.startswith("pyinfra/api/util.py,")
    )  # fmt: skip
    digest = hashlib.sha256((INSTALLED / "api" / "util.py").read_bytes()).digest()
    assert wheel_hash == "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.mark.parametrize("deploy_file", [__file__, None, "/nowhere/deploy.py"])
def test_the_patched_pyinfra_orders_as_the_released_one(
    deploy_file: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pyinfra, "is_cli", True)
    patched = _patched_order(tmp_path)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=4)
    orders = (patched, util.get_operation_order_from_stack)
    ours, theirs = [_nested(9, order, state) for order in orders]  # both from one line
    assert ours == theirs


def test_the_global_arguments_are_pyinfras_own_computed_once() -> None:
    from pyinfra.api import arguments

    from iotfleet.roles.pyinfra_fixes import GLOBAL_ARGUMENTS_SOURCE_SHA256

    computed = list(get_type_hints(arguments.AllArguments).items())
    assert arguments.all_global_arguments() == computed  # what pyinfra computes, each time
    assert arguments.all_global_arguments() is not arguments.all_global_arguments()
    assert getattr(arguments.all_global_arguments, "_iotfleet_connection_lost_fix", False)
    assert GLOBAL_ARGUMENTS_SOURCE_SHA256  # applied only over the function it was read from
