"""Data keys of the sshd hardening role (``ssh_hardening_*``), defined once in
``iotfleet.model.settings.SshHardeningSettings``:

    ssh_hardening_enabled            opt in: keys only, no forwarding, modern algorithms
    ssh_hardening_permit_root_login  prohibit-password (the rollout logs in as root) or no
    ssh_hardening_max_auth_tries     authentication attempts per connection
    ssh_hardening_login_grace_time   seconds to log in
    ssh_hardening_max_startups       unauthenticated connections before sshd drops new ones
    ssh_hardening_kex_algorithms / _ciphers / _macs   what sshd offers
"""

from iotfleet.model.settings import SshHardeningSettings, role_defaults

DEFAULTS = role_defaults(SshHardeningSettings, "ssh_hardening_")
