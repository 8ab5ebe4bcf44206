"""Reproducible classrooms: a roster becomes a fleet, a lab, credentials and handouts."""
