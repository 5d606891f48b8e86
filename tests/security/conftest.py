from tests.security.users import (  # noqa: F401  (two real OS users per pytest worker)
    attacker,
    attacker_account,
    victim,
    victim_account,
)
