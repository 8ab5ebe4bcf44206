"""The fleet as the control machine resolves it: the inventory read into the model, where its
state lives, its secrets, the identities its PKI holds (iotfleet's own included), and the
context every rollout, check and handout works from."""
