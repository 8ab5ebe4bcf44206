"""Fleet-wide settings of a class (applies to every host of inventory/classroom.py).

Derived from the class's class.json: one device and one MQTT user per student, each confined
to class/<student>/..., and a teacher who reads every student's topics.
"""

from pyinfra import inventory

from iotfleet.classroom.inventory import classroom_fleet_data
from iotfleet.classroom.store import current_class_name, load_class

# pyinfra reads every file of group_data/ whatever the inventory: only the classroom
# inventory (its hosts form the group "classroom") reads the class.
if inventory.get_group("classroom", None):
    _data = classroom_fleet_data(load_class(current_class_name()))
    fleet_name = _data["fleet_name"]
    fleet_topic_root = _data["fleet_topic_root"]
    fleet_devices = _data["fleet_devices"]
    fleet_clients = _data["fleet_clients"]
    fleet_roles = _data["fleet_roles"]
    mosquitto_listeners = _data["mosquitto_listeners"]
    pki_passphrase_generated = _data["pki_passphrase_generated"]
    espgw_wifi_ssid = _data["espgw_wifi_ssid"]
    espgw_wifi_passphrase = _data["espgw_wifi_passphrase"]
