"""Full rollout: ``pyinfra inventory/<fleet>.py deploy.py``.

PKI on the control machine -> brokers -> gateways; each tier also runs on its own
(``pyinfra inventory/<fleet>.py deploy/brokers.py``).
"""

from pyinfra import local

local.include("deploy/pki.py")
local.include("deploy/brokers.py")
local.include("deploy/gateways.py")
