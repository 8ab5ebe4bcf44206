"""What makes a host's package installs unsafe until healed: a stale service-start guard
(``/usr/sbin/policy-rc.d``) and a dpkg that a killed run interrupted. Read by the host state
(``host_state``), healed by ``install_debs``."""

from __future__ import annotations

import shlex

POLICY_RC = "/usr/sbin/policy-rc.d"
GUARD_MARK = "# managed by iotfleet: service-start guard"
# What iotfleet before issue 12 wrote: it refused every start for as long as it existed.
LEGACY_GUARD = "#!/bin/sh\nexit 101\n"

GUARD = shlex.quote(POLICY_RC)
# An iotfleet guard whose owner is gone (it allows the start), or the legacy one, is stale.
STALE_TEST = (
    f'{{ [ "$(cat {GUARD} 2>/dev/null)" = {shlex.quote(LEGACY_GUARD.rstrip())} ] || '
    f"{{ grep -qxF {shlex.quote(GUARD_MARK)} {GUARD} 2>/dev/null && "
    f"{{ {GUARD} iotfleet-probe start >/dev/null 2>&1; [ $? -ne 101 ]; }}; }}; }}"
)
DPKG_PENDING_TEST = (
    '{ [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ] || '
    '[ -n "$(dpkg --audit 2>/dev/null)" ]; }'
)
# The host state's lines for both ("h stale-guard", "h dpkg-interrupted").
PACKAGE_HEALTH = (
    f"if [ -e {GUARD} ] && {STALE_TEST}; then echo 'h stale-guard'; fi; "
    f"if {DPKG_PENDING_TEST}; then echo 'h dpkg-interrupted'; fi"
)
