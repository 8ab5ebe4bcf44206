"""``python -m iotfleet.emulator --listen 127.0.0.1:PORT --flash FILE --mac MAC [faults]``."""

from __future__ import annotations

from iotfleet.cli.emulator import serve

if __name__ == "__main__":
    serve.main(prog_name="python -m iotfleet.emulator")
