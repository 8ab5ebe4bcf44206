"""Compliance checks: probes from outside (TLS, MQTT) and the runner behind ``iotfleet check``.

The inside checks judge what ``host_facts`` read on a broker against the inventory, one module
per concern: ``file_checks``, ``service_checks``, ``listener_checks``, ``broker_config_checks``
and ``access_checks``. Each function returns problems: one sentence a security reviewer
understands, naming the host and what is wrong, e.g. "/etc/mosquitto/certs/server.key is 0644
root:mosquitto, expected 0640 root:mosquitto". An empty list means the check passed. They are
pure functions: no host access.
"""
