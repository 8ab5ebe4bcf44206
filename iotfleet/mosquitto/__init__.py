"""Mosquitto engine parts: password hashing, ACL and configuration rendering (no pyinfra)."""
