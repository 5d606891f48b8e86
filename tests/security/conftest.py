from tests.security.users import attacker, victim  # noqa: F401  (two real OS users per worker)
