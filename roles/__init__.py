"""Reusable pyinfra deploys, one package per role.

Importing any role applies the fixes to pyinfra that iotfleet carries (``roles.pyinfra_fixes``):
a host lost mid-run fails that host only, and Ctrl-C ends a rollout with a non-zero exit.
"""

from roles import pyinfra_fixes

pyinfra_fixes.apply()
