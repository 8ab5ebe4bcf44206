"""iotfleet's reusable pyinfra deploys, one package per role, imported as ``iotfleet.roles``.

This folder is their home in the repository; the package reaches it through the
``iotfleet/roles`` link, and the wheel installs it as ``iotfleet/roles`` (so a user's own
``roles/`` folder never shadows it). A role imported as ``roles.x`` next to ``iotfleet.roles.x``
would be a second copy with its own caches: refused.
"""

if __name__ != "iotfleet.roles":
    raise ImportError(f"import iotfleet's roles as iotfleet.roles, not {__name__}")

# Importing any role applies the fixes to pyinfra that iotfleet carries (``pyinfra_fixes``): a
# host lost mid-run fails that host only, and Ctrl-C ends a rollout with a non-zero exit.
from iotfleet.roles import pyinfra_fixes

pyinfra_fixes.apply()
