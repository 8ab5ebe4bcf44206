"""Compliance checks: probes from outside (TLS, MQTT) and the runner behind ``iotfleet check``."""
