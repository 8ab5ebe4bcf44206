"""Control-machine file primitives, one job per module.

- ``iotfleet.fs.atomic``: crash-safe writes (replace, or create-if-absent), durable, no temp
  file left behind, one-line ``WriteError`` when the disk says no;
- ``iotfleet.fs.locks``: flock locks (exclusive or shared, waiting or refusing at once) whose
  error names the lock file and the process holding it;
- ``iotfleet.fs.stage``: the planning ``Stage`` those writes record into instead of writing;
- ``iotfleet.fs.errors``: their exceptions (imported by the PKI's own, so nothing here imports
  ``iotfleet.pki``).
"""
