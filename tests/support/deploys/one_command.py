"""One command on every host (a fault test's rollout); with ``$IOTFLEET_TEST_CARRIED_FIX`` set,
iotfleet's roles are imported first, which applies the pyinfra fixes iotfleet carries."""

import os

from pyinfra.operations import server

if os.environ.get("IOTFLEET_TEST_CARRIED_FIX"):
    import iotfleet.roles  # noqa: F401

server.shell(name="One command on every host", commands=["true"])
