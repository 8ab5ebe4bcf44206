"""Reusable pyinfra deploys, one package per role."""
