"""No operation: what pyinfra itself costs on the inventory's hosts (connect, load, disconnect);
bench/rollout.py's floor."""
