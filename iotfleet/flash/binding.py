"""Identity bound to hardware: may this board (its MAC) become this device?

The first successful flash enrolls the board's MAC for the device. Later, a different MAC for
the same device is refused unless re-enrollment is asked for (the board was replaced), and a MAC
given in the inventory must always match: it says which board belongs on the port.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from iotfleet.flash.errors import FlashError

Binding = Literal["enroll", "enrolled", "reenroll"]


def check_binding(
    *,
    device_id: str,
    mac: str,
    expected: Sequence[tuple[str, str]],
    enrolled_mac: str | None,
    mac_owner: str | None,
    reenroll: bool,
) -> Binding:
    """Decide, or raise ``FlashError(kind="refused")`` saying which key or record disagrees.

    Args:
        device_id: the device the board is about to become.
        mac: what the board answered.
        expected: (inventory key, MAC) pairs that must match, e.g. the board's ``mac``.
        enrolled_mac: the MAC the registry binds ``device_id`` to, if any.
        mac_owner: the device the registry binds ``mac`` to, if any.
        reenroll: ``espgw_reenroll``: accept a new board for an enrolled device.
    """
    for key, wanted in expected:
        if wanted != mac:
            raise FlashError(
                f"the board answers with MAC {mac} but {key} is {wanted}: "
                "wrong board on this port, or fix the inventory",
                "refused",
            )
    if mac_owner is not None and mac_owner != device_id and not reenroll:
        raise FlashError(
            f"MAC {mac} is enrolled as device {mac_owner}; to turn this board into "
            f"{device_id}, flash with re-enrollment (espgw_reenroll: true)",
            "refused",
        )
    if enrolled_mac is None:
        return "enroll"
    if enrolled_mac == mac:
        return "enrolled"
    if not reenroll:
        raise FlashError(
            f"device {device_id} is enrolled with MAC {enrolled_mac}, this board is {mac}; "
            "if the board was replaced, flash with re-enrollment (espgw_reenroll: true)",
            "refused",
        )
    return "reenroll"
