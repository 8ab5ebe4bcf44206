"""Data keys of the mosquitto role (``mosquitto_*``).

Each key, its default and its one-line description are defined once, in
``iotfleet.model.settings.MosquittoSettings``, so the rollout and the compliance checks read
the same values; ``iotfleet keys`` prints the table. The keys:

    mosquitto_listeners           listeners; default one TLS listener on 8883, client certificates
    mosquitto_dns_names           DNS names clients use (certificate SANs); default: host name
    mosquitto_ip_addresses        IP addresses clients use (SANs); default: ssh_hostname
    mosquitto_package_version     pin the Debian package version
    mosquitto_max_connections     connection limit per listener (sizes LimitNOFILE too)
    mosquitto_message_size_limit  largest accepted payload in bytes
    mosquitto_persistence         keep retained messages and sessions on disk
    mosquitto_log_types           what Mosquitto logs (to the journal)
    mosquitto_tls_version         lowest TLS version accepted (tlsv1.2)
    mosquitto_ciphers             TLS 1.2 cipher list (AEAD + ECDHE only)
    mosquitto_ciphers_tls13       TLS 1.3 cipher suites
    mosquitto_username_as_clientid client id forced to the username (no session takeover)
    mosquitto_password_min_length shortest MQTT password accepted
    mosquitto_password_iterations PBKDF2-SHA512 rounds of each $7$ hash
    mosquitto_max_inflight_messages, mosquitto_max_queued_messages, mosquitto_max_queued_bytes
                                  what one client may hold in the broker
    mosquitto_memory_max_mb       MemoryMax of the unit (default sized to the connection limit)
    mosquitto_health_timeout      seconds a restarted broker has to pass its health check
    mosquitto_apply_lock_wait     seconds an apply waits for another rollout's apply on the broker
"""

from iotfleet.model.settings import MosquittoSettings, role_defaults

DEFAULTS = role_defaults(MosquittoSettings, "mosquitto_")
