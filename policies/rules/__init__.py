"""The rule modules; each registers its rules with ``policies.registry`` on import."""
