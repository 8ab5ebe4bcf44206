"""iotfleet: infrastructure as code for secure MQTT fleets (engine and CLI)."""

__version__ = "0.1.0"
