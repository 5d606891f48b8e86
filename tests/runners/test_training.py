"""The job file's ``triggers:`` schedule: the cron reading that ``hml watch`` fires on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runners.training import last_fire, parse_cron

AT = datetime(2026, 12, 4, 3, 20, 30, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(
    "expression,within,want",
    [
        ("0 3 * * *", timedelta(hours=1), datetime(2026, 12, 4, 3, 0, tzinfo=UTC)),
        ("0 3 * * *", timedelta(minutes=10), None),  # missed by more than the catch-up window
        ("*/15 * * * *", timedelta(hours=1), datetime(2026, 12, 4, 3, 15, tzinfo=UTC)),
        ("20 3 * * 5", timedelta(0), datetime(2026, 12, 4, 3, 20, tzinfo=UTC)),  # Friday is 5
        ("0 0 * * 1-4", timedelta(days=2), datetime(2026, 12, 3, 0, 0, tzinfo=UTC)),  # Thursday midnight
        ("0 0 15 * 0", timedelta(days=7), datetime(2026, 11, 29, 0, 0, tzinfo=UTC)),  # a Sunday, not the 15th
        ("30 2,4 * * *", timedelta(hours=2), datetime(2026, 12, 4, 2, 30, tzinfo=UTC)),
    ],
)
def test_last_fire(expression, within, want):
    assert last_fire(expression, AT, within) == want


@pytest.mark.parametrize(
    "expression,word",
    [
        ("0 3 * *", "five fields"),
        ("60 * * * *", "minute '60'"),
        ("* * * * 7", "weekday '7'"),
        ("5-1 * * * *", "low to high"),
        ("a * * * *", "use *"),
    ],
)
def test_bad_cron_names_the_field(expression, word):
    with pytest.raises(ValueError, match=word):
        parse_cron(expression)
