"""iotfleet's compliance suite (``iotfleet check``), a pytest plugin: see ``plugin.py``."""
